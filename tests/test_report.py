"""Report formats, sorting, seeds as mean ± std, and the CLI end to end."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bench import SCHEMA_VERSION
from bench.report import FORMATS
from tests.support import answers, make_cell, run_file, study_record, trial_record


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small run with two archs x two seeds, shared by the report tests."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "s.toml"
    path.write_text(TINY.replace("seeds = [0]", "seeds = [0, 1]") + '[grid]\n"model.arch" = ["bench:small_cnn", "bench:mlp"]\n')
    summary = run_file(path, tmp / "results")
    return summary.suite_dir


def test_markdown_leaderboard_sorted_by_val_error_with_seed_spread(finished):
    from bench.report import render

    text = render(finished, "markdown")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "arch" and "val err" in table[0] and "test err" in table[0]
    assert len(table) == 2 + 2  # header, rule, one row per arch (seeds averaged)
    assert all("± " in row and "(2)" in row for row in table[2:])
    cells = [row.split("|")[2].strip() for row in table[2:]]
    vals = [float(c.strip("*").split("±")[0]) for c in cells]
    assert vals == sorted(vals)
    assert [c.startswith("**") for c in cells] == [v == vals[0] for v in vals]  # the best is bold, ties too


def test_a_spread_that_rounds_to_zero_keeps_its_seed_count(tmp_path):
    """Seeds that agree to the shown digits are still several seeds: `± 0.000 (2)`, not a bare mean."""
    from bench.report import render

    s = tmp_path / "s"
    for seed, error in enumerate([0.5, 0.5002]):
        make_cell(s, f"c{seed}", seed=seed, val_error=error, test_error=error)
    row = _md_rows(render(s, "markdown", metrics=["val_error", "test_error"]))[2]
    assert row[-2:] == ["0.500 ± 0.000 (2)"] * 2


def test_csv_and_json_parse_back_with_mean_and_std(finished):
    from bench.report import render

    df = pd.read_csv(io.StringIO(render(finished, "csv")))
    assert len(df) == 2 and set(df["n"]) == {2}
    assert {"val_error", "val_error_std", "test_error", "train_time_s", "params_total"} <= set(df.columns)
    assert df["val_error"].is_monotonic_increasing
    records = json.loads(render(finished, "json"))
    assert [r["label"] for r in records] == df["label"].tolist()


def test_report_defaults_to_latest_run_and_writes_a_file(finished, cli, tmp_path):
    out = tmp_path / "board.md"
    code, _, _ = cli("report", "--results", finished.parent, "--out", out)
    assert code == 0 and "bench:small_cnn" in out.read_text()
    code, _, err = cli("report", tmp_path / "nothing-here")
    assert code == 2 and "no run found" in err
    code, _, err = cli("report", "--format", "xml")
    assert code == 2


def test_cli_end_to_end_in_a_fresh_process(tmp_path, write_suite):
    """The installed console script: run, then report, as a user types them. The cell trains in the bench
    process (--in-process): a run's cell processes are tests/test_resume.py's."""
    path = write_suite()
    env_run = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--results", str(tmp_path / "r"),
                              "--in-process"], capture_output=True, text=True, timeout=300)
    assert env_run.returncode == 0, env_run.stderr
    assert "1 ran, 0 skipped, 0 failed" in env_run.stderr
    rep = subprocess.run([sys.executable, "-m", "bench", "report", "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "val err" in rep.stdout
    models = subprocess.run([sys.executable, "-m", "bench", "models", "bench:*"], capture_output=True, text=True)
    names = models.stdout.split()
    assert {"bench:mlp", "bench:cifar_cnn", "bench:small_cnn"} <= set(names) and all(n.startswith("bench:") for n in names)


# ---------------------------------------------------------------- synthetic records (no training)

ENV_B = {"device_name": "NVIDIA H100", "torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31"}


@pytest.fixture
def grid(tmp_path):
    """Study 001's Table 3 shape: three archs x two freeze settings, two seeds each, one CPU."""
    s = tmp_path / "grid"
    errors = {("tv:alexnet", "none"): 0.88, ("tv:alexnet", "all_but_head"): 0.86,
              ("tv:densenet121", "none"): 0.75, ("tv:densenet121", "all_but_head"): 0.71,
              ("timm:resnext", "none"): 0.70, ("timm:resnext", "all_but_head"): 0.68}
    for i, ((arch, freeze), err) in enumerate(errors.items()):
        for seed in (0, 1):
            make_cell(s, f"c{i}s{seed}", arch=arch, freeze=freeze, seed=seed, val_error=err + (0.01 if seed else -0.01),
                      test_error=err, train_time_s=10.0 * (i + 1))
    return s


def _md_rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


class Parsed:
    """A rendered table read back: header, data rows (cell texts without markup) and the bold cell texts
    (None where the format has no bold)."""

    def __init__(self, rows: list[list[str]], bold: list[str] | None = None):
        self.header, self.rows, self.bold = rows[0], rows[1:], bold


def _parse_markdown(text):
    rows = _md_rows(text)
    del rows[1]  # the |---| rule
    bold = [c.strip("*") for r in rows for c in r if c.startswith("**")]
    return Parsed([[c.strip("*") for c in r] for r in rows], bold)


def _parse_latex(text):
    lines = text.splitlines()
    top, bottom = lines.index(r"\midrule"), lines.index(r"\bottomrule")
    plain = {r"\_": "_", r"$\pm$": "±", "---": "—"}
    rows, bold = [], []
    for line in [lines[top - 1], *lines[top + 1:bottom]]:
        assert line.endswith(r" \\")
        cells = []
        for c in line.removesuffix(r" \\").split(" & "):
            for tex, ch in plain.items():
                c = c.replace(tex, ch)
            if c.startswith(r"\textbf{"):
                c = c.removeprefix(r"\textbf{").removesuffix("}")
                bold.append(c)
            cells.append(c)
        rows.append(cells)
    return Parsed(rows, bold)


def _parse_html(text):
    from html.parser import HTMLParser

    class Cells(HTMLParser):  # each <tr>'s cell texts, and the bold ones
        def __init__(self):
            super().__init__()
            self.rows, self.bold, self.tags = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.rows[-1].append("")

        def handle_endtag(self, tag):
            assert self.tags.pop() == tag

        def handle_data(self, data):
            if self.tags and self.tags[-1] in ("td", "th", "b"):
                self.rows[-1][-1] += data
                if self.tags[-1] == "b":
                    self.bold.append(data)

    parser = Cells()
    parser.feed(text)
    assert not parser.tags
    return Parsed(parser.rows, parser.bold)


def _parse_table(text):
    lines = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
    return Parsed([[c.strip() for c in line[1:-1].replace("┃", "│").split("│")] for line in lines])


def _parse_csv(text):
    import csv

    return Parsed(list(csv.reader(io.StringIO(text))))


def _parse_json(text):
    records = json.loads(text)
    return Parsed([list(records[0])] + [[str(v) for v in r.values()] for r in records])


PARSERS = {"markdown": _parse_markdown, "latex": _parse_latex, "html": _parse_html, "table": _parse_table,
           "csv": _parse_csv, "json": _parse_json}


def _numbers(cells):
    """Every number written in `cells` (display strings carry mean, std and n; data formats one each)."""
    return [float(n.replace(",", "")) for c in cells for n in re.findall(r"\d[\d,]*(?:\.\d+)?", c)]


def _has(cells, value, tol=5e-4):
    return any(abs(n - value) <= tol for n in _numbers(cells))


BOARD = [("timm:resnext", "all_but_head", 0.68), ("timm:resnext", "none", 0.70),
         ("tv:densenet121", "all_but_head", 0.71), ("tv:densenet121", "none", 0.75),
         ("tv:alexnet", "all_but_head", 0.86), ("tv:alexnet", "none", 0.88)]  # the grid, best first


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_parses_back_with_the_values(grid, fmt):
    """Over the registry itself: a new format fails here until it has a parser and shows the values."""
    from bench.report import render

    assert fmt in PARSERS, f"format '{fmt}' has no parser in PARSERS: add one so its output is checked"
    board = PARSERS[fmt](render(grid, fmt))
    assert len(board.rows) == len(BOARD) and all(len(r) == len(board.header) for r in board.rows)
    for row, (arch, freeze, error) in zip(board.rows, BOARD, strict=True):
        assert {arch, freeze} <= set(row) and _has(row, error)
    assert _has(board.rows[0], 0.01414)  # the spread over two seeds
    if board.bold is not None:
        assert "0.680 ± 0.014 (2)" in board.bold and "0.880 ± 0.014 (2)" not in board.bold

    pivot = PARSERS[fmt](render(grid, fmt, rows=["model.arch"], cols=["model.freeze"]))
    assert pivot.header[1:] == ["all_but_head", "none"] and len(pivot.rows) == 3
    for row, arch in zip(pivot.rows, ["timm:resnext", "tv:densenet121", "tv:alexnet"], strict=True):
        errors = {freeze: e for a, freeze, e in BOARD if a == arch}
        assert row[0] == arch and _has(row[1:2], errors["all_but_head"]) and _has(row[2:3], errors["none"])
    if pivot.bold is not None:
        assert pivot.bold == ["0.680 ± 0.014 (2)", "0.700 ± 0.014 (2)"]  # best per column


def test_best_value_is_bold_in_each_columns_own_direction(tmp_path):
    from bench.report import render

    s = tmp_path / "s"
    make_cell(s, "a", arch="x", metrics={"val": {"top1_error": 0.2, "map": 0.5}, "test": {"top1_error": 0.3}})
    make_cell(s, "b", arch="y", metrics={"val": {"top1_error": 0.1, "map": 0.4}, "test": {"top1_error": 0.4}})
    rows = _md_rows(render(s, "markdown", metrics=["val_error", "val_map"]))
    assert rows[0][2:] == ["val err", "val mAP"]
    assert rows[2][2:] == ["**0.100**", "0.400"] and rows[3][2:] == ["0.200", "**0.500**"]
    # sorting follows the metric's own direction: mAP descending
    rows = _md_rows(render(s, "markdown", metrics=["val_map"], sort="val_map"))
    assert [r[0] for r in rows[2:]] == ["x", "y"]


def test_pivot_reproduces_study_001_tables(grid, tmp_path):
    from bench.report import render

    # Table 3: one row per architecture, one column of validation error
    rows = _md_rows(render(grid, "markdown", rows=["model.arch"], filters=["model.freeze=all_but_head"]))
    assert rows[0] == ["arch", "val err"]
    assert [r[0] for r in rows[2:]] == ["timm:resnext", "tv:densenet121", "tv:alexnet"]
    assert rows[2][1].startswith("**0.680") and rows[4][1].startswith("0.860")
    # Table 2: one row ("val err"), one column per setting of the key
    rows = _md_rows(render(grid, "markdown", cols=["model.freeze"], filters=["model.arch=tv:alexnet"]))
    assert rows[0] == ["", "all_but_head", "none"] and len(rows) == 3
    assert rows[2][0] == "val err" and rows[2][1].startswith("**0.860") and rows[2][2].startswith("0.880")
    # both: archs x freeze, best per column
    rows = _md_rows(render(grid, "markdown", rows=["model.arch"], cols=["model.freeze"]))
    assert rows[0] == ["arch", "all_but_head", "none"] and len(rows) == 2 + 3
    assert [r[1].startswith("**") for r in rows[2:]] == [True, False, False]
    df = pd.read_csv(io.StringIO(render(grid, "csv", rows=["model.arch"], cols=["model.freeze"])))
    assert list(df.columns) == ["model.arch", "all_but_head", "none"] and df["none"].max() == pytest.approx(0.88)


def test_pivot_refuses_to_average_different_cells(grid):
    from bench.errors import UserError
    from bench.report import render

    with pytest.raises(UserError, match="different cells fall in one pivot cell"):
        render(grid, "markdown", rows=["model.arch"])


def test_filters_globs_negation_and_typos(grid):
    from bench.errors import UserError
    from bench.report import render

    df = pd.read_csv(io.StringIO(render(grid, "csv", filters=["model.arch=tv:*"])))
    assert set(df["model.arch"]) == {"tv:alexnet", "tv:densenet121"}
    df = pd.read_csv(io.StringIO(render(grid, "csv", filters=["model.arch=tv:*", "model.freeze!=none"])))
    assert df["model.arch"].tolist() == ["tv:densenet121", "tv:alexnet"]
    df = pd.read_csv(io.StringIO(render(grid, "csv", filters=["seed=1"])))
    assert set(df["n"]) == {1}
    with pytest.raises(UserError, match="unknown key 'model.frezze'.*did you mean 'model.freeze'"):
        render(grid, "csv", filters=["model.frezze=none"])
    with pytest.raises(UserError, match="no cell record matches"):
        render(grid, "csv", filters=["model.arch=nothing"])
    with pytest.raises(UserError, match="not KEY=GLOB"):
        render(grid, "csv", filters=["model.arch"])


def test_other_devices_are_marked_and_never_ranked_on_time(tmp_path):
    from bench.report import render

    s = tmp_path / "s"
    make_cell(s, "a", arch="cpu1", val_error=0.3, train_time_s=100.0)
    make_cell(s, "b", arch="cpu2", val_error=0.4, train_time_s=50.0)
    make_cell(s, "c", arch="gpu", val_error=0.2, train_time_s=5.0, env=ENV_B)
    text = render(s, "markdown", metrics=["val_error", "train_time_s"])
    rows = _md_rows(text)
    assert rows[2][:2] == ["gpu", "none†"] and rows[3][:2] == ["cpu1", "none"]  # the mark ends the row's name
    assert "† measured on NVIDIA H100" in text
    assert rows[2][2] == "**0.200**"  # errors still rank across devices
    assert not any("**" in r[3] for r in rows[2:])  # times do not
    # sorted by time: within one environment only
    rows = _md_rows(render(s, "markdown", metrics=["train_time_s"], sort="train_time_s"))
    assert [r[0] for r in rows[2:]] == ["cpu2", "cpu1", "gpu"]
    # one device: the fastest is bold
    rows = _md_rows(render(s, "markdown", metrics=["train_time_s"], filters=["device=AMD*"]))
    assert rows[-1][2] != rows[2][2] and "**50.0**" in [r[2] for r in rows[2:]]


def test_several_suites_in_one_report(grid, tmp_path, cli):
    other = tmp_path / "other"
    make_cell(other, "z", arch="tv:alexnet", freeze="none", val_error=0.1)
    code, out, _ = cli("report", grid, other, "--format", "csv")
    df = pd.read_csv(io.StringIO(out))
    assert code == 0 and len(df) == 7 and df["suite"].iloc[0] == "other" and set(df["suite"]) == {"grid", "other"}
    code, out, err = cli("report", grid, other, "--rows", "model.arch", "--cols", "model.freeze")
    assert code == 2 and "different cells fall in one pivot cell" in err
    code, out, _ = cli("report", grid, other, "--rows", "suite,model.arch", "--cols", "model.freeze")
    assert code == 0 and len(_md_rows(out)) == 2 + 4
    code, out, _ = cli("report", grid, other, "--filter", "suite=other", "--filter", "model.freeze=none",
                       "--format", "json")
    assert code == 0 and [r["suite"] for r in json.loads(out)] == ["other"]


def test_metrics_missing_from_result_json_are_recomputed_from_predictions(tmp_path, cli):
    from bench.metrics import full_metrics
    from bench.report import render

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 3, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    s = tmp_path / "s"
    make_cell(s, "a", predictions=(logits.numpy(), labels.numpy()),
              metrics={"val": {"top1_error": 0.5}, "test": {"top1_error": 0.123, "f1_macro": 0.999}})
    expected = full_metrics(logits, labels)
    df = pd.read_csv(io.StringIO(render(s, "csv", metrics=["test_error", "test_f1_macro", "test_map", "test_auc"])))
    assert df["test_error"][0] == pytest.approx(0.123)  # stored values are used as they are
    assert df["test_f1_macro"][0] == pytest.approx(0.999)
    assert df["test_map"][0] == pytest.approx(expected["map"], abs=1e-6)  # missing ones come from predictions
    code, out, _ = cli("report", s, "--format", "csv", "--recompute", "--metrics", "test_error,test_f1_macro")
    df = pd.read_csv(io.StringIO(out))
    assert code == 0 and df["test_error"][0] == pytest.approx(expected["top1_error"], abs=1e-6)
    assert df["test_f1_macro"][0] == pytest.approx(expected["f1_macro"], abs=1e-6)


def test_cost_columns_gflops_throughput_and_time_to_target(tmp_path):
    from bench.report import render

    s = tmp_path / "s"
    history = {"epoch": [1, 2, 3], "train_seconds": [2.0, 3.0, 4.0], "val_error": [0.6, 0.4, 0.3]}
    make_cell(s, "a", cost={"gflops_forward": 0.5, "train_images_per_s": 200.0}, history=history)
    df = pd.read_csv(io.StringIO(render(s, "csv", metrics=["gflops", "gflops_per_s"], target_error=0.45)))
    assert df["gflops"][0] == 0.5 and df["gflops_per_s"][0] == pytest.approx(3 * 0.5 * 200.0)
    assert df["time_to_target_s"][0] == pytest.approx(5.0)
    from bench.errors import UserError

    with pytest.raises(UserError, match="needs --target-error"):
        render(s, "csv", metrics=["time_to_target_s"])
    with pytest.raises(UserError, match="unknown metric 'val_eror'.*did you mean 'val_error'"):
        render(s, "csv", metrics=["val_eror"])


def test_failed_cells_are_footnoted(tmp_path):
    from bench.report import render

    s = tmp_path / "s"
    make_cell(s, "a", arch="ok")
    make_cell(s, "b", arch="bad", status="failed")
    text = render(s, "markdown")
    assert len(_md_rows(text)) == 3 and "failed: b arch=bad freeze=none: RuntimeError: boom" in text


def test_export_writes_a_kaggle_submission(tmp_path, cli):
    from bench.store import write_json

    s = tmp_path / "s"
    logits = [[0.1, 0.7, 0.2], [0.9, 0.0, 0.1], [0.2, 0.3, 0.5]]
    d = make_cell(s, "a", predictions=(logits, [1, 0, 0]), split_key="k0")
    write_json(s / "splits" / "k0.json", {"train": [], "val": ["b/5.jpg"] * 3,
                                          "test": ["b/img_1.jpg", "a/img_7.jpg", "c/img_9.jpg"]})
    code, _, err = cli("export", d, "--out", tmp_path / "sub.csv", "--k", "2")
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    assert list(sub.columns) == ["id", "predicted"]
    assert sub.values.tolist() == [["img_1", "1 2"], ["img_7", "0 2"], ["img_9", "2 1"]]
    code, _, err = cli("export", "a", "--suite", s, "--out", tmp_path / "sub5.csv")  # k capped at 3 classes
    assert code == 0 and pd.read_csv(tmp_path / "sub5.csv", dtype=str)["predicted"][0] == "1 2 0"
    code, _, err = cli("export", "nope", "--suite", s, "--out", tmp_path / "x.csv")
    assert code == 2 and "matches 0 cells" in err


def test_cli_report_pivot_in_latex_and_bad_metric(grid, cli, tmp_path):
    code, out, err = cli("report", grid, "--rows", "model.arch", "--cols", "model.freeze", "--format", "latex")
    assert code == 0 and r"\toprule" in out and "tv:alexnet" in out
    code, out, err = cli("report", grid, "--metrics", "val_error,bogus")
    assert code == 2 and "unknown metric 'bogus'" in err


def _refusals(s, cell_dir, out):
    """Every command that reads records, naming the cell by folder and by id."""
    name = cell_dir.name
    return [("report", s), ("report", s, "--plots", out / "plots"), ("compare", cell_dir, s / "ok"),
            ("compare", "ok", name, "--suite", s), ("export", cell_dir, "--out", out / "sub.csv"),
            ("export", name, "--suite", s, "--out", out / "sub.csv")]


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, None], ids=["other", "missing"])
def test_a_record_of_another_schema_is_refused_not_mixed(tmp_path, cli, version):
    from bench.store import write_json

    s = tmp_path / "s"
    make_cell(s, "ok", predictions=([[1.0, 0.0, 0.0]], [0]))
    old = make_cell(s, "old", predictions=([[1.0, 0.0, 0.0]], [0]))
    result = json.loads((old / "result.json").read_text())
    result.pop("schema_version")
    write_json(old / "result.json", result if version is None else {**result, "schema_version": version})
    for args in _refusals(s, old, tmp_path):
        code, out, err = cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        found = "no schema_version" if version is None else f"schema_version {version}"
        assert f"{old}: its result.json has {found}, this bench reads {SCHEMA_VERSION}" in err
        assert "rerun the suite with this version of bench" in err and not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("name", ["result.json", "cell.json"])
def test_a_corrupt_record_is_a_one_line_error_naming_the_file(tmp_path, cli, name):
    s = tmp_path / "s"
    make_cell(s, "ok", predictions=([[1.0, 0.0, 0.0]], [0]))
    bad = make_cell(s, "bad", predictions=([[1.0, 0.0, 0.0]], [0]))
    (bad / name).write_text('{"status": "ok", "metrics": {')  # cut short
    for args in _refusals(s, bad, tmp_path):
        code, _, err = cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert f"{bad / name}: not valid JSON" in err and "bench run SUITE --only bad --force" in err


# ---------------------------------------------------------------- issue 11: labels, targets, integers, confusion

LABELLED = """
[suite]
name = "x"

[[cells]]
label = "{first}"
"model.arch" = "tv:resnet18"

[[cells]]
label = "{second}"
"model.arch" = "tv:alexnet"
"model.freeze" = "all_but_head"
"""


def _labelled_suite(s, first="scratch", second="frozen backbone"):
    make_cell(s, "a", arch="tv:resnet18", label=first, val_error=0.2, axes={"train.epochs": 10})
    make_cell(s, "b", arch="tv:alexnet", freeze="all_but_head", label=second, val_error=0.3, axes={"train.epochs": 20})
    (s / "suite.toml").write_text(LABELLED.format(first=first, second=second))
    return s


def test_a_suite_of_labelled_cells_reports_one_label_column(tmp_path):
    from bench.report import render

    s = _labelled_suite(tmp_path / "s")
    for fmt in ("markdown", "latex", "html", "table"):
        board = PARSERS[fmt](render(s, fmt))
        assert board.header[:2] == ["label", "val err"], fmt  # not arch, freeze, epochs
        assert [r[0] for r in board.rows] == ["scratch", "frozen backbone"]
    df = pd.read_csv(io.StringIO(render(s, "csv")))  # the numbers keep every config key
    assert {"label", "model.arch", "model.freeze", "train.epochs"} <= set(df.columns) and "labelled" not in df
    # the same records from a suite without [[cells]] labels: a column per key that varies
    (s / "suite.toml").write_text('[suite]\nname = "x"\n[grid]\n"model.arch" = ["tv:resnet18", "tv:alexnet"]\n')
    assert _md_rows(render(s, "markdown"))[0][:3] == ["arch", "freeze", "epochs"]
    # several suites, one of them labelled: suite, then the label
    other = tmp_path / "other"
    make_cell(other, "z", arch="tv:vgg16", val_error=0.1)
    _labelled_suite(tmp_path / "s")
    rows = _md_rows(render([s, other], "markdown"))
    assert rows[0][:3] == ["suite", "label", "val err"]
    assert [r[:2] for r in rows[2:]] == [["other", "arch=tv:vgg16 freeze=none"], ["s", "scratch"],
                                         ["s", "frozen backbone"]]


def test_time_to_target_says_how_many_seeds_reached_it(tmp_path):
    import statistics

    from bench.report import render

    s, target = tmp_path / "s", 0.45
    runs = {  # per cell, per seed: (training seconds per epoch, validation error per epoch)
        "fast": [([1.0] * 3, [0.4, 0.3, 0.3]), ([2.0] * 3, [0.44, 0.3, 0.3]), ([1.0] * 3, [0.6, 0.5, 0.46])],
        "never": [([1.0] * 3, [0.9, 0.8, 0.7])] * 3,
        "alone": [([1.0, 2.0, 3.0], [0.5, 0.4, 0.3])], "slow": [([1.0, 2.0, 3.0], [0.5, 0.5, 0.4])]}
    expected = {}
    for arch, seeds in runs.items():
        expected[arch] = []
        for seed, (seconds, errors) in enumerate(seeds):
            history = {"epoch": [1, 2, 3], "train_seconds": seconds, "val_error": errors}
            make_cell(s, f"{arch}{seed}", arch=arch, seed=seed, history=history, val_error=errors[-1])
            hit = next((i for i, e in enumerate(errors) if e <= target), None)
            if hit is not None:
                expected[arch].append(sum(seconds[: hit + 1]))
    rows = {r[0]: r for r in _md_rows(render(s, "markdown", metrics=["val_error"], target_error=target))[2:]}
    fast = expected["fast"]
    assert rows["fast"][-1] == f"{statistics.mean(fast):.1f} ± {statistics.stdev(fast):.1f} (2 of 3)"
    assert rows["never"][-1] == "not reached (0 of 3)"
    assert rows["slow"][-1] == f"{expected['slow'][0]:.1f}"  # one seed: no count
    # the fastest of the cells whose every seed reached it is bold; "fast" is faster on the seeds that did
    assert rows["alone"][-1] == f"**{expected['alone'][0]:.1f}**" and statistics.mean(fast) < expected["alone"][0]
    df = pd.read_csv(io.StringIO(render(s, "csv", metrics=["val_error"], target_error=target))).set_index("model.arch")
    assert df.loc["fast", "time_to_target_reached"] == 2 and df.loc["fast", "time_to_target_runs"] == 3
    assert df.loc["never", "time_to_target_reached"] == 0 and pd.isna(df.loc["never", "time_to_target_s"])
    assert df.loc["fast", "time_to_target_s"] == pytest.approx(statistics.mean(fast))
    pivot = _md_rows(render(s, "markdown", rows=["model.arch"], value="time_to_target_s", target_error=target))
    assert {r[0]: r[1] for r in pivot[2:]}["never"] == "not reached (0 of 3)"


def test_integers_stay_integers_in_a_report_of_several_suites(tmp_path):
    from bench.report import render

    a, b = tmp_path / "a", tmp_path / "b"
    params = {"a1": 1234, "a2": 56789, "b1": 123456}
    epochs = {"a1": 10, "a2": 20}
    for suite, cid in ((a, "a1"), (a, "a2"), (b, "b1")):
        make_cell(suite, cid, arch=cid, cost={"params_total": params[cid], "params_trainable": params[cid] // 2},
                  axes={"train.epochs": epochs[cid]} if cid in epochs else None)
    rows = _md_rows(render([a, b], "markdown"))
    epoch_col, params_col = rows[0].index("epochs"), rows[0].index("params")
    shown = {r[1]: r for r in rows[2:]}
    assert {k: shown[k][epoch_col] for k in params} == {"a1": "10", "a2": "20", "b1": "—"}
    assert {k: shown[k][params_col].strip("*") for k in params} == {k: f"{v:,}" for k, v in params.items()}
    df = pd.read_csv(io.StringIO(render([a, b], "csv")), dtype=str, keep_default_na=False).set_index("model.arch")
    assert df["params_total"].to_dict() == {k: str(v) for k, v in params.items()}  # 1234, not 1234.0
    assert df["train.epochs"].to_dict() == {"a1": "10", "a2": "20", "b1": ""}
    for r in json.loads(render([a, b], "json")):
        assert r["params_total"] == params[r["model.arch"]] and isinstance(r["params_total"], int)
        assert r["train.epochs"] == epochs.get(r["model.arch"]) and not isinstance(r["train.epochs"], float)


def test_the_runner_stores_the_test_confusion_matrix(finished):
    import numpy as np

    from bench.metrics import confusion_matrix

    cells = [d for d in finished.iterdir() if (d / "predictions.npz").is_file()]
    assert cells
    for d in cells:
        with np.load(d / "predictions.npz") as npz:
            logits, labels, saved = npz["test_logits"], npz["test_labels"], npz["test_confusion"]
        assert saved.sum() == len(labels) and saved.shape == (logits.shape[1],) * 2
        assert saved.tolist() == confusion_matrix(torch.from_numpy(logits), torch.from_numpy(labels)).tolist()


# ---------------------------------------------------------------- several data sets, significance, tuning


# test error per data set; a is best on all three, b and c trade places on d3, d never ran on d3
SCORES = {"a": {"d1": 0.10, "d2": 0.20, "d3": 0.30}, "b": {"d1": 0.15, "d2": 0.25, "d3": 0.45},
          "c": {"d1": 0.20, "d2": 0.30, "d3": 0.40}, "d": {"d1": 0.50, "d2": 0.50}}


@pytest.fixture
def datasets(tmp_path):
    s = tmp_path / "multi"
    for arch, by in SCORES.items():
        for dataset, err in by.items():
            for seed in (0, 1):  # the score is the mean over seeds
                make_cell(s, f"{arch}-{dataset}-{seed}", arch=arch, dataset=dataset, seed=seed,
                          val_error=err, test_error=err + (0.02 if seed else -0.02), split_key=f"{dataset}{seed}")
    return s


def test_contenders_are_ranked_across_data_sets_with_friedman_and_nemenyi(datasets):
    from bench import ranking
    from bench.report import render

    text = render(datasets, "markdown")
    board, _, section = text.partition("ranking across 3 data sets")
    assert section, text
    rows = _md_rows(section)
    assert rows[0] == ["contender", "d1", "d2", "d3", "mean rank", "mean z", "CD group"]
    # a: 1, 1, 1; b: 2, 2, 3; c: 3, 3, 2 (the label less its dataset=... part names the contender)
    assert [(r[0], r[4]) for r in rows[2:]] == [("arch=a freeze=none", "**1.00**"), ("arch=b freeze=none", "2.33"),
                                                ("arch=c freeze=none", "2.67")]
    assert rows[3][3] == "0.450 (3)" and rows[2][1] == "**0.100 (1)**"
    table = pd.DataFrame({k: v for k, v in SCORES.items() if k != "d"}).T
    test = ranking.friedman_nemenyi(table)
    assert f"p = {test.p_value:.3g}" in section and f"CD = {test.critical_difference:.3f}" in section
    assert "dropped from the ranking and the Friedman test" in section and "arch=d freeze=none (missing on d3)" in section
    z = ranking.mean_z_scores(table)
    assert rows[2][5] == f"**{z.iloc[0]:+.2f}**"
    # every format carries it: the text formats as a second table, csv and json as columns of every row
    for fmt in ("latex", "html", "table"):
        out = render(datasets, fmt)
        assert "ranking across 3 data sets" in out and "Friedman" in out and "2.33" in out, fmt
    df = pd.read_csv(io.StringIO(render(datasets, "csv")))
    b = df[df["contender"] == "arch=b freeze=none"]
    assert len(b) == 3 and b["mean_rank"].round(3).tolist() == [2.333] * 3 and sorted(b["rank"]) == [2, 2, 3]
    assert df.loc[df["contender"] == "arch=d freeze=none", "mean_rank"].isna().all()
    assert df["friedman_p"].dropna().round(6).unique().tolist() == [round(test.p_value, 6)]
    records = json.loads(render(datasets, "json"))
    assert {r["dataset"] for r in records} == {"d1", "d2", "d3"} and all("mean_z" in r for r in records)


def test_one_data_set_adds_no_ranking_and_value_picks_the_score(datasets):
    from bench.report import render

    assert "ranking across" not in render(datasets, "markdown", filters=["dataset=d1"])
    by_val = render(datasets, "markdown", value="val_error")
    assert "by val err, mean over seeds" in by_val and "ranking across 3 data sets" in by_val


def test_a_suite_without_a_test_split_ranks_its_data_sets_on_validation(tmp_path):
    """Study 004's split ([0.8, 0.2, 0.0]) over several data sets: the ranking is by the split it has."""
    from bench.report import render

    s = tmp_path / "noval"
    for arch, by in SCORES.items():
        for dataset, err in by.items():
            make_cell(s, f"{arch}-{dataset}", arch=arch, dataset=dataset, metrics={"val": {"top1_error": err}})
    section = render(s, "markdown").partition("ranking across 3 data sets")[2]
    assert "by val err, mean over seeds" in section, section
    rows = _md_rows(section)
    assert [(r[0], r[4]) for r in rows[2:]] == [("arch=a freeze=none", "**1.00**"), ("arch=b freeze=none", "2.33"),
                                                ("arch=c freeze=none", "2.67")]


def _sig_suite(s, seeds=(0, 1)):
    """Three rows on the same images per seed: the best, a near tie, one clearly worse; and one row on
    another data set, worse than all, that has nothing of its own to be compared with."""
    n = 200
    best = np.ones(n, dtype=bool)
    best[:20] = False  # 10% wrong
    tie = best.copy()
    tie[20:23] = False  # 3 more wrong, 1 fewer
    tie[0] = True
    bad = best.copy()
    bad[20:80] = False  # 60 more wrong
    for seed in seeds:
        for name, right, val in (("best", best, 0.10), ("tie", tie, 0.11), ("bad", bad, 0.30)):
            make_cell(s, f"{name}{seed}", arch=name, seed=seed, val_error=val, test_error=1 - right.mean(),
                      predictions=answers(right), split_key=f"k{seed}")
        make_cell(s, f"other{seed}", arch="other", seed=seed, val_error=0.9, test_error=0.9,
                  predictions=answers(np.arange(n) % 10 == 0), split_key=f"elsewhere{seed}")
    return s


def test_rows_significantly_worse_than_the_best_are_marked(tmp_path):
    from bench.report import render

    s = _sig_suite(tmp_path / "s")
    def marked(text):
        col = _md_rows(text)[0].index("test err")
        return {r[0]: r[col].removeprefix("**").removesuffix("**").endswith("*") for r in _md_rows(text)[2:]}

    text = render(s, "markdown")
    assert marked(text) == {"best": False, "tie": False, "bad": True, "other": False}
    assert "significantly worse on the test images than the best row by val err" in text
    assert "McNemar" in text and "Holm-corrected over the rows compared with the same best row, 2 compared" in text
    assert "alpha 0.05" in text
    df = pd.read_csv(io.StringIO(render(s, "csv")))
    assert df.set_index("model.arch")["worse"].to_dict() == {"best": False, "tie": False, "bad": True, "other": False}
    plain = render(s, "markdown", marks=False)
    assert not any(marked(plain).values()) and "significantly worse" not in plain
    for fmt in ("latex", "html", "table"):
        assert "significantly worse" in render(s, fmt), fmt


def test_significance_pools_the_seeds_paired_by_seed(tmp_path):
    from bench.compare import correctness, mcnemar, pooled_mcnemar

    s = _sig_suite(tmp_path / "s", seeds=(0, 1, 2))
    pairs = [(correctness(s / f"best{k}"), correctness(s / f"tie{k}")) for k in range(3)]
    pooled = pooled_mcnemar(pairs)
    assert (pooled.seeds, pooled.images, pooled.a_only_right, pooled.b_only_right) == (3, 600, 9, 3)
    assert pooled.p_value == pytest.approx(mcnemar(9, 3)[0])
    other = correctness(s / "other0")
    assert pooled_mcnemar([(pairs[0][0], (other[0][:-1], other[1][:-1]))]) is None  # not the same images


@pytest.fixture
def tuned(tmp_path):
    s = tmp_path / "tuned"
    a = [trial_record(s, "ca", 0, 0.1, "complete", 0.40), trial_record(s, "ca", 1, 0.003, "complete", 0.20, test=0.22),
         trial_record(s, "ca", 2, 0.0001, "pruned", 0.60)]
    study_record(s, "ca", "arch=a", a, "ca-t1", {"top1_error": 0.22})
    b = [trial_record(s, "cb", 0, 0.01, "complete", 0.30, arch="b", test=0.05,  # a test figure it must never show
                predictions=answers(np.ones(20, dtype=bool))),
         {"number": 1, "cell": None, "params": {"train.lr": 0.02}, "state": "running", "value": None,
          "train_time_s": 0.0}]
    study_record(s, "cb", "arch=b", b, None, arch="b")
    return s


def test_a_tuned_suite_shows_one_row_per_contender_with_its_chosen_trial_and_cost(tuned):
    from bench.report import render

    text = render(tuned, "markdown")
    rows = _md_rows(text)
    assert rows[0][:7] == ["arch", "train.lr", "trials", "pruned", "tuning s", "val err", "test err"]
    assert rows[2][:7] == ["a", "0.003", "3", "1", "32.5", "0.200", "0.220"]  # 3 x 10 s trials + 2.5 s; nothing bold: b is not done
    assert rows[3][:7] == ["b (partial)", "0.01", "1", "0", "12.5", "0.300", "—"]  # best so far, never its test
    assert len(rows) == 4  # the other trials are no rows
    assert "tuned: 3 trials per contender over train.lr, chosen on validation (val_error); test evaluated once, " \
           "for the chosen trial" in text
    assert "partial: tuning of 1 of 2 contenders has not finished: arch=b (1 of 3 trials complete)" in text
    df = pd.read_csv(io.StringIO(render(tuned, "csv")))
    assert df[["train.lr", "trials", "pruned"]].values.tolist() == [[0.003, 3, 1], [0.01, 1, 0]]
    assert df["test_error"].isna().tolist() == [False, True]


def test_a_tuned_suite_over_data_sets_ranks_the_chosen_trials(tmp_path):
    from bench.report import render

    s = tmp_path / "tuned"
    for d, errs in (("d1", (0.2, 0.3)), ("d2", (0.25, 0.5))):
        for arch, err in zip("ab", errs, strict=True):
            c = f"{arch}{d}"
            trials = [trial_record(s, c, 0, 0.1, "complete", err + 0.1, arch=arch),
                      trial_record(s, c, 1, 0.01, "complete", err, arch=arch, test=err)]
            study_record(s, c, f"arch={arch} dataset={d}", trials, f"{c}-t1", {"top1_error": err}, arch=arch)
            for path in (s / "tune").glob(f"{c}.json"):  # the contender's axes name its data set
                study = json.loads(path.read_text())
                path.write_text(json.dumps({**study, "axes": {"model.arch": arch, "dataset": d}}))
    section = render(s, "markdown").partition("ranking across 2 data sets")[2]
    rows = _md_rows(section)
    assert [(r[0], r[1], r[2], r[3]) for r in rows[2:]] == [("arch=a", "**0.200 (1)**", "**0.250 (1)**", "**1.00**"),
                                                            ("arch=b", "0.300 (2)", "0.500 (2)", "2.00")]
