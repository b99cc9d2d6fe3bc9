"""Report formats, sorting, seeds as mean ± std, and the CLI end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small run with two archs x two seeds, shared by the report tests."""
    from bench import runner
    from bench.config import load_suite
    from bench.progress import LogProgress
    from bench.suite import expand
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "s.toml"
    path.write_text(TINY.replace("seeds = [0]", "seeds = [0, 1]") + '[grid]\n"model.arch" = ["bench:small_cnn", "bench:mlp"]\n')
    suite = load_suite(path)
    summary = runner.run_suite(path.read_text(), "tiny", expand(suite), tmp / "results", device="cpu",
                               progress=LogProgress())
    return summary.suite_dir


def test_markdown_leaderboard_sorted_by_val_error_with_seed_spread(finished):
    from bench.report import render

    text = render(finished, "markdown")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "arch" and "val err" in table[0] and "test err" in table[0]
    assert len(table) == 2 + 2  # header, rule, one row per arch (seeds averaged)
    assert all("± " in row and "(2)" in row for row in table[2:])
    vals = [float(row.split("|")[2].split("±")[0]) for row in table[2:]]
    assert vals == sorted(vals)


def test_csv_and_json_parse_back_with_mean_and_std(finished):
    from bench.report import render

    df = pd.read_csv(io.StringIO(render(finished, "csv")))
    assert len(df) == 2 and set(df["n"]) == {2}
    assert {"val_error", "val_error_std", "test_error", "train_time_s", "params_total"} <= set(df.columns)
    assert df["val_error"].is_monotonic_increasing
    records = json.loads(render(finished, "json"))
    assert [r["label"] for r in records] == df["label"].tolist()


def test_rich_table_format(finished):
    from bench.report import render

    text = render(finished, "table")
    assert "bench:mlp" in text and "val err" in text and "┃" in text


def test_report_defaults_to_latest_run_and_writes_a_file(finished, cli, tmp_path):
    out = tmp_path / "board.md"
    code, _, _ = cli("report", "--results", finished.parent, "--out", out)
    assert code == 0 and "bench:small_cnn" in out.read_text()
    code, _, err = cli("report", tmp_path / "nothing-here")
    assert code == 2 and "no run found" in err
    code, _, err = cli("report", "--format", "xml")
    assert code == 2


def test_cli_end_to_end_in_a_fresh_process(tmp_path, write_suite):
    """The installed console script: run, then report, as a user types them."""
    path = write_suite()
    env_run = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--results", str(tmp_path / "r")],
                             capture_output=True, text=True, timeout=300)
    assert env_run.returncode == 0, env_run.stderr
    assert "1 ran, 0 skipped, 0 failed" in env_run.stderr
    rep = subprocess.run([sys.executable, "-m", "bench", "report", "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "val err" in rep.stdout
    models = subprocess.run([sys.executable, "-m", "bench", "models", "bench:*"], capture_output=True, text=True)
    assert models.stdout.split() == ["bench:mlp", "bench:cifar_cnn", "bench:small_cnn"]
