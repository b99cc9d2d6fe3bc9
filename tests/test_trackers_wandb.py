"""The W&B tracker, offline only: what it wrote is read back from W&B's own transaction logs (run-*.wandb) with
W&B's own reader, `wandb leet inspect --json` (wandb-core; 0.31 has no Python reader of these logs left)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config.suite import Log
from bench.trackers.base import TRACKERS, CellRun, Ending

wandb = pytest.importorskip("wandb")
from bench.trackers.wandb import SUSPENDED_EXIT_CODE, WandB  # noqa: E402

# one worker runs the module's tests, so one set of runs (and one W&B service start, about 0.5 s) serves all
pytestmark = pytest.mark.xdist_group("wandb")

ROWS = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.1 * e, "lr": 0.01} for e in range(1, 6)]


def _cell(results: Path, name: str, **kw) -> CellRun:
    folder = results / name
    (folder / "plots").mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"cell": name}))
    (folder / "plots" / "curves.png").write_bytes(b"png of " + name.encode())
    (folder / "predictions.npz").write_bytes(b"npz of " + name.encode())
    config = {"model": {"arch": f"arch-{name}", "pretrained": False}, "train": {"lr": 0.01}, "seed": 1}
    return CellRun(id=f"id{name}", label=f"{name} s1", suite="tiny", seed=1, config=config,
                   params={"model.arch": f"arch-{name}"}, dir=folder, **kw)


def _files(cell: CellRun, predictions: bool = False) -> list[Path]:
    """An Ending's files, as bench.trackers.sync names them ([log] predictions decides the last)."""
    return [cell.dir / "result.json", cell.dir / "plots" / "curves.png",
            *([cell.dir / "predictions.npz"] if predictions else [])]


# `wandb leet inspect --json FILE` for each file, in one Python (wandb takes ~0.5 s to start): the command
# exits when its wandb-core child does, each file's records end with a line that is no JSON record
_READER = """
import sys
from wandb.cli.cli import cli
for path in sys.argv[1:]:
    try:
        cli.main(["leet", "inspect", "--json", path], prog_name="wandb")
    except SystemExit as e:
        if e.code:
            raise
    print("--", flush=True)
"""


def _read(paths: list[Path]) -> list[list[dict]]:
    """Each transaction log's records, as W&B's CLI prints them."""
    out = subprocess.run([sys.executable, "-c", _READER, *map(str, paths)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    files = out.stdout.split("--\n")
    assert files.pop() == "" and len(files) == len(paths), out.stdout
    return [[json.loads(line) for line in records.splitlines()] for records in files]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Cells a (ok, interleaved with b), b (a diverged tuning trial), c (suspended after 3 epochs, continued
    and sent epochs 1..5 again) and d (still open when its tracker closes, after the other tracker closed);
    -> ({cell: run id}, {cell: [records of each of its run folders, oldest first]}, {cell: its run folders},
    the two trackers)."""
    results = tmp_path_factory.mktemp("results")
    home = tmp_path_factory.mktemp("wandb-home")
    mp = pytest.MonkeyPatch()
    # nothing leaves this machine, nothing is written to the user's W&B folders
    for var, value in {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_CONFIG_DIR": home,
                       "WANDB_CACHE_DIR": home, "WANDB_DATA_DIR": home}.items():
        mp.setenv(var, str(value))
    wandb.teardown()  # W&B reads its environment once per setup
    try:
        a, b = _cell(results, "a"), _cell(results, "b", contender="c1", contender_label="tuned a", trial=3)
        c, d = _cell(results, "c"), _cell(results, "d")
        plain = WandB("offline", Log(wandb="offline"), results, "tiny")
        other = WandB("offline", Log(wandb="offline", project="other", entity="team", predictions=True),
                      results, "tiny")
        ra, rb = plain.start(a, None, 0), plain.start(b, None, 0)
        ra.log_epochs(ROWS[:1])
        rb.log_epochs(ROWS[:2])
        ra.log_epochs(ROWS[1:3])
        rb.finish(Ending("diverged", "loss is nan at epoch 2", {"val.acc": 0.2}, _files(b)))
        ra.finish(Ending("ok", None, {"val.acc": 0.3, "test.acc": 0.25, "test": 9.0, "cost.params": 1e6},
                         _files(a)))
        rc = other.start(c, None, 0)
        rc.log_epochs(ROWS[:3])
        rc.suspend()
        rc2 = other.start(c, rc.id, 3)
        rc2.log_epochs(ROWS)
        rc2.finish(Ending("ok", None, {"val.acc": 0.5}, _files(c, predictions=True)))
        rd = other.start(d, None, 0)
        rd.log_epochs(ROWS[:1])
        plain.close()
        other.close()
        ids = {"a": ra.id, "b": rb.id, "c": rc.id, "d": rd.id}
        folders = {k: sorted((results / "wandb").glob(f"offline-run-*-{i}*")) for k, i in ids.items()}
        read = iter(_read([f / f"run-{ids[k]}.wandb" for k, fs in folders.items() for f in fs]))
        yield ids, {k: [next(read) for _ in fs] for k, fs in folders.items()}, folders, (plain, other)
    finally:
        wandb.teardown()
        mp.undo()


def _of(records: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in records if r["type"] == kind]


def _history(records: list[dict]) -> dict[int, dict]:
    """step -> the row logged at it, W&B's own columns (_runtime, ...) left out."""
    rows = {}
    for h in _of(records, "history"):
        assert h["step"]["num"] not in rows, "a step written twice"
        rows[h["step"]["num"]] = {k: v for k, v in h["item"].items() if not k.startswith("_")}
    return rows


def _logged(rows: list[dict]) -> dict[int, dict]:
    return {r["epoch"]: dict(r) for r in rows}


def _summary(records: list[dict]) -> dict:
    out: dict = {}
    for s in _of(records, "summary"):
        out.update(s["update"])
    return out


def _exit_codes(records: list[dict]) -> list[int]:
    return [e.get("exit_code", 0) for e in _of(records, "exit")]  # a protobuf field at 0 may be left out


def _run(records: list[dict]) -> dict:
    return _of(records, "run")[-1]  # W&B writes the run again when it changes (its notes)


def test_registered():
    assert TRACKERS["wandb"] is WandB
    assert WandB("online", Log(wandb="online"), Path("r"), "tiny").destination == "wandb:/tiny"
    assert WandB("offline", Log(project="p", entity="e"), Path("r"), "tiny").destination == "wandb:e/p"


def test_history_rows_per_step(logs):
    """Each run has each epoch's numeric columns at step = epoch, though a's and b's were sent interleaved."""
    ids, runs, _, _ = logs
    assert _history(runs["a"][0]) == _logged(ROWS[:3])
    assert _history(runs["b"][0]) == _logged(ROWS[:2])


def test_config_names_and_groups(logs):
    ids, runs, _, (plain, other) = logs
    a, b, c = _run(runs["a"][0]), _run(runs["b"][0]), _run(runs["c"][0])
    assert a["config"]["update"]["model"]["arch"] == "arch-a" and a["config"]["update"]["seed"] == 1
    assert (a["display_name"], a["project"], a["run_group"], a["job_type"]) == ("a s1", "tiny", "tiny", "cell")
    assert "ida" in a["tags"] and "ida" in a["notes"]
    # a tuning trial is grouped with its contender's other trials
    assert (b["display_name"], b["run_group"], b["job_type"]) == ("b s1", "tuned a", "trial")
    assert (c["project"], c["entity"], c["run_id"]) == ("other", "team", ids["c"])


def test_summary_and_exit_code(logs):
    """The final figures under their dotted names (nested, as the config is), the status; a cell that did not
    end well ends its run with a non-zero exit code and its reason."""
    _, runs, _, _ = logs
    a, b = _summary(runs["a"][0]), _summary(runs["b"][0])
    # "test" holds a value of its own, so test.acc keeps its dotted name
    assert (a["val"], a["test.acc"], a["test"], a["cost"]) == ({"acc": 0.3}, 0.25, 9.0, {"params": 1e6})
    assert a["status"] == "ok" and "reason" not in a
    assert _exit_codes(runs["a"][0]) == [0]
    assert (b["status"], b["reason"]) == ("diverged", "loss is nan at epoch 2")
    assert _exit_codes(runs["b"][0]) == [1]
    assert _run(runs["b"][0])["notes"].endswith("\ndiverged: loss is nan at epoch 2")


def test_files(logs):
    """The Ending's files (record, plots, predictions when [log] predictions is set) go with the run as laid out
    in the cell's folder."""
    _, runs, folders, _ = logs
    saved = [f["path"] for r in _of(runs["a"][0], "files") for f in r["files"]]
    assert sorted(saved) == ["plots/curves.png", "result.json"]
    assert (folders["a"][0] / "files" / "plots" / "curves.png").read_bytes() == b"png of a"
    saved = [f["path"] for r in _of(runs["c"][0], "files") for f in r["files"]]
    assert sorted(saved) == ["plots/curves.png", "predictions.npz", "result.json"]
    assert (folders["c"][0] / "files" / "predictions.npz").read_bytes() == b"npz of c"


def test_continued_run_gets_each_epoch_once(logs):
    """c's offline run, suspended after epochs 1..3 and continued: its earlier folder gave way to one that
    holds every epoch once (a killed process may not have written what it was sent), for `wandb sync`."""
    ids, runs, folders, _ = logs
    [only] = runs["c"]
    assert [f.name.split("-")[3] for f in folders["c"]] == [ids["c"]]
    assert _history(only) == _logged(ROWS)
    assert _run(only)["resume"] is True and _exit_codes(only) == [0]


def test_close_suspends_open_runs(logs):
    """A run still open when its tracker closes is suspended, not left for W&B's teardown to finish as a
    success."""
    _, runs, _, (plain, other) = logs
    (d,) = runs["d"]
    assert _history(d) == _logged(ROWS[:1])
    assert _of(d, "preempting") == [{}] and _exit_codes(d) == [SUSPENDED_EXIT_CODE]
    assert not plain.runs and not other.runs


def test_online_without_api_key_does_not_prompt(monkeypatch, tmp_path):
    """Online with no API key: an error at once, not wandb.init's prompt for a key (which would hold up the
    thread that follows every cell)."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("")
    for var, value in {"NETRC": tmp_path / "netrc", "WANDB_CONFIG_DIR": tmp_path, "WANDB_CACHE_DIR": tmp_path,
                       "WANDB_DATA_DIR": tmp_path, "WANDB_ERROR_REPORTING": "false"}.items():
        monkeypatch.setenv(var, str(value))

    def no_init(*a, **k):
        raise AssertionError("wandb.init called online in a test")

    monkeypatch.setattr(wandb, "init", no_init)
    wandb.teardown()
    try:
        with pytest.raises(RuntimeError, match="API key"):
            WandB("online", Log(wandb="online"), tmp_path, "tiny").start(_cell(tmp_path, "a"), None, 0)
    finally:
        wandb.teardown()
