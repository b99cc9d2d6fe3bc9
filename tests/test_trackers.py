"""[log] and `bench log`: a suite's cells in MLflow (read back with MlflowClient from the SQLite store), runs
continued after an interruption with each epoch once, trials nested under their contender, failures recorded
and never failing a cell. TensorBoard and W&B have their own files (test_trackers_tensorboard, _wandb)."""

from __future__ import annotations

import json
import math

import pytest

GRID = '[grid]\n"train.lr" = [0.003, 0.01]\n'


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables made (MLflow's schema migrations take seconds per new store)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def store(empty_store, tmp_path):
    """results/mlflow.db of each test's results folder (tmp_path / "r"), a copy of the empty store."""
    import shutil

    (tmp_path / "r").mkdir()
    shutil.copy(empty_store, tmp_path / "r" / "mlflow.db")


def _client(results):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")


def _runs(results, suite="tiny"):
    client = _client(results)
    experiment = client.get_experiment_by_name(suite)
    return client, client.search_runs([experiment.experiment_id])


def _records(suite_dir):
    return {p.name: json.loads((p / "result.json").read_text()) for p in suite_dir.iterdir()
            if (p / "result.json").is_file()}


def _history_csv(cell_dir):
    import csv

    with (cell_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


def _steps(client, run, key="val_error"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_each_cell_is_one_mlflow_run_with_its_config_history_figures_and_record(write_suite, tmp_path, cli):
    path = write_suite(GRID + "[log]\nmlflow = true\n")
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    assert code == 0, err
    client, runs = _runs(tmp_path / "r")
    records = _records(tmp_path / "r" / "tiny")
    assert sorted(r.data.tags["bench.cell_id"] for r in runs) == sorted(records)
    for run in runs:
        cid = run.data.tags["bench.cell_id"]
        record = records[cid]
        history = _history_csv(tmp_path / "r" / "tiny" / cid)
        assert run.info.status == "FINISHED" and run.data.tags["bench.status"] == "ok"
        assert run.info.run_name == json.loads((tmp_path / "r" / "tiny" / cid / "cell.json").read_text())["label"]
        assert run.data.params["model.arch"] == record["config"]["model"]["arch"]
        assert float(run.data.params["train.lr"]) == record["config"]["train"]["lr"]
        steps = _steps(client, run)
        assert [s for s, _ in steps] == [1, 2] == list(range(1, len(history) + 1))
        assert [v for _, v in steps] == pytest.approx([float(r["val_error"]) for r in history])
        assert run.data.metrics["test.top1_error"] == pytest.approx(record["metrics"]["test"]["top1_error"])
        assert run.data.metrics["cost.params_total"] == record["cost"]["params_total"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"result.json", "history.csv"}
        assert record["trackers"] == {f"mlflow:sqlite:///{tmp_path / 'r' / 'mlflow.db'}": {"run": run.info.run_id}}
    # a backfill sends nothing twice
    code, _, err = cli("log", tmp_path / "r" / "tiny", "--to", "mlflow")
    assert code == 0 and "0 new run(s), 0 continued, 0 ended, 0 epoch(s) sent; ok" in err
    assert len(_runs(tmp_path / "r")[1]) == 2


def test_bench_log_sends_a_suite_run_without_trackers_once(write_suite, tmp_path, cli):
    path = write_suite(GRID)
    assert cli("run", path, "--results", tmp_path / "r")[0] == 0
    assert not list((tmp_path / "r" / "tiny").glob("*/trackers.json"))
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    for sent in ("2 new run(s), 0 continued, 2 ended, 4 epoch(s)", "0 new run(s), 0 continued, 0 ended, 0 epoch"):
        code, _, err = cli("log", tmp_path / "r" / "tiny", "--to", f"mlflow={store}")
        assert code == 0 and sent in err, err
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 2 and all(len(_steps(client, r)) == 2 for r in runs)
    code, _, err = cli("log", tmp_path / "r" / "tiny", "--to", "mlflw")
    assert code == 2 and "did you mean 'mlflow'" in err


def test_an_interrupted_cell_continues_its_run_and_sends_each_epoch_once(write_suite, tmp_path, monkeypatch):
    from bench import api, checkpoint
    from bench.cell import RunOptions
    from tests.test_resume import StopAt

    monkeypatch.setattr(checkpoint, "MAX_SHARE", math.inf)  # a checkpoint every epoch: resumes at a known one
    path = write_suite("[log]\nmlflow = true\n")
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 5"))
    planned = api.plan(path, check=False)
    results = tmp_path / "r"

    def run(stop=None):
        return api.run(planned, results=results, device="cpu", progress=StopAt(stop),
                       options=RunOptions(isolate=False))

    with pytest.raises(KeyboardInterrupt):  # as epoch 3 ends, before its checkpoint: the rerun trains it again
        run(3)
    client, [run_] = _runs(results)
    assert run_.info.status == "KILLED" and [s for s, _ in _steps(client, run_)] == [1, 2, 3]
    # as if killed between sending epoch 3 and saving that it went: the store says what it holds
    state_file = next(results.glob("tiny/*/trackers.json"))
    state = json.loads(state_file.read_text())
    for s in state.values():
        s["epochs"] = 1
    state_file.write_text(json.dumps(state))
    assert run().ran
    client, [again] = _runs(results)
    assert again.info.run_id == run_.info.run_id and again.info.status == "FINISHED"
    steps = _steps(client, again)
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5]
    # each step's value is history.csv's (epoch 3, trained again after the resume, is bitwise the same on the
    # CPU, so the values cannot tell keeping from resending: the steps above say each epoch went once)
    assert [v for _, v in steps] == [float(r["val_error"]) for r in _history_csv(state_file.parent)]


def test_a_failed_cell_ends_its_run_failed_with_the_reason(write_suite, tmp_path, cli):
    path = write_suite('[grid]\n"train.lr" = [0.003, 1e6]\n[log]\nmlflow = true\n')
    path.write_text(path.read_text().replace('optimizer = "adam"', 'optimizer = "sgd"'))
    assert cli("run", path, "--results", tmp_path / "r")[0] == 1  # the diverged cell
    _, runs = _runs(tmp_path / "r")
    by_status = {r.data.tags["bench.status"]: r for r in runs}
    assert by_status["ok"].info.status == "FINISHED"
    bad = by_status["diverged"]
    assert bad.info.status == "FAILED" and "diverged at epoch 1" in bad.data.tags["bench.reason"]


@pytest.mark.parametrize("where", ["opening the store", "sending an epoch"])
def test_a_failing_tracker_is_one_warning_the_cells_go_on_and_bench_log_sends_later(write_suite, tmp_path, cli,
                                                                                  monkeypatch, where):
    if where == "opening the store":
        (tmp_path / "a-file").write_text("")  # a store under a file: MLflow cannot make its folder
        store = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    else:
        from bench.trackers import mlflow as tracker

        def full(self, rows):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tracker._Run, "log_epochs", full)
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_suite(GRID + f'[log]\nmlflow = "{store}"\n')
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    assert code == 0, err
    [line] = [line for line in err.splitlines() if "warning" in line]  # once, not once per cell or epoch
    assert f"mlflow (mlflow:{store}) failed" in line and f"bench log {tmp_path / 'r' / 'tiny'} --to mlflow" in line
    records = _records(tmp_path / "r" / "tiny")
    assert [r["status"] for r in records.values()] == ["ok", "ok"]
    assert all("error" in r["trackers"][f"mlflow:{store}"] for r in records.values())
    if where == "sending an epoch":
        monkeypatch.undo()
        code, _, err = cli("log", tmp_path / "r" / "tiny", "--to", "mlflow")
        assert code == 0 and "ended, 4 epoch(s) sent; ok" in err, err
        records = _records(tmp_path / "r" / "tiny")
        assert all(set(r["trackers"][f"mlflow:{store}"]) == {"run"} for r in records.values())


def test_a_missing_tracker_package_is_one_line_with_the_install_command(write_suite, tmp_path, cli, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find(name, *a))
    code, _, err = cli("run", write_suite('[log]\nwandb = "offline"\n'), "--results", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "log.wandb: needs the wandb package" in err and "pip install 'bench[wandb]'" in err
    assert not (tmp_path / "r" / "tiny").exists()


TUNED = '''
[tune]
space = {"train.lr" = {choices = [0.001, 0.003]}}
trials = 2
sampler = "grid"

[log]
mlflow = true
'''


def test_a_tuned_contender_is_a_parent_run_with_its_trials_nested_and_the_chosen_one_tagged(write_suite, tmp_path,
                                                                                           cli):
    code, _, err = cli("run", write_suite(TUNED), "--results", tmp_path / "r")
    assert code == 0, err
    client, runs = _runs(tmp_path / "r")
    [parent] = [r for r in runs if r.data.tags.get("bench.kind") == "contender"]
    trials = [r for r in runs if r.data.tags.get("bench.kind") == "trial"]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    record = json.loads(next((tmp_path / "r" / "tiny" / "tune").glob("*.json")).read_text())
    chosen = {r.data.tags["bench.cell_id"]: r.data.tags["bench.chosen"] for r in trials}
    assert chosen == {t["cell"]: str(t["cell"] == record["chosen"]).lower() for t in record["trials"]}
    [best] = [r for r in trials if r.data.tags["bench.chosen"] == "true"]
    assert best.data.metrics["test.top1_error"] == pytest.approx(record["test"]["top1_error"])
    assert parent.data.tags["bench.chosen_trial"] == record["chosen"] and parent.info.status == "FINISHED"
    assert parent.info.run_name == record["label"]
    assert parent.data.metrics["test.top1_error"] == pytest.approx(record["test"]["top1_error"])
    # told again (a backfill), nothing is logged twice
    assert cli("log", tmp_path / "r" / "tiny", "--to", "mlflow")[0] == 0
    for run_id in (parent.info.run_id, best.info.run_id):
        assert len(client.get_metric_history(run_id, "test.top1_error")) == 1


@pytest.mark.slow
def test_a_run_killed_by_sigkill_continues_each_trackers_run_with_every_epoch_once(write_suite, tmp_path,
                                                                                   monkeypatch):
    import os
    import signal

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.support import bench, run_file, wait_for
    from tests.test_trackers_wandb import _history, _read

    # epochs long enough (~0.2 s) that the kill comes mid-training, after the parent sent some of them
    path = write_suite('[log]\nmlflow = true\ntensorboard = true\nwandb = "offline"\n')
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 20").replace("images = 120", "images = 900"))
    results = tmp_path / "r"

    def sent() -> bool:
        state = next(results.glob("tiny/*/trackers.json"), None)
        try:
            return state is not None and all(s["epochs"] >= 2 for s in json.loads(state.read_text()).values())
        except (ValueError, KeyError):
            return False

    home = tmp_path / "wandb-home"  # nothing leaves this machine, nothing lands in the user's W&B folders
    wandb_env = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_CONFIG_DIR": str(home),
                 "WANDB_CACHE_DIR": str(home), "WANDB_DATA_DIR": str(home)}
    proc = bench("run", str(path), "--results", str(results), "--device", "cpu", env={**os.environ, **wandb_env})
    wait_for(sent, proc, "two epochs sent to both trackers")
    os.killpg(proc.pid, signal.SIGKILL)  # bench, its fork server and the cell's process: no goodbye to anyone
    proc.wait()
    for var, value in wandb_env.items():
        monkeypatch.setenv(var, value)
    assert not run_file(path, results, log=open(os.devnull, "w")).failed
    client, [run] = _runs(results)
    assert run.info.status == "FINISHED" and [s for s, _ in _steps(client, run)] == list(range(1, 21))
    [folder] = (results / "tensorboard" / "tiny").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("val/error")] == list(range(1, 21))
    # W&B: the killed process's offline folder gave way to one with every epoch (the kill took what W&B's
    # service had not written yet)
    [run_id] = {json.loads(p.read_text())["wandb:/tiny"]["run"] for p in results.glob("tiny/*/trackers.json")}
    [log] = (results / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb")
    [records] = _read([log])
    assert list(_history(records)) == list(range(1, 21))


def test_a_cell_run_anew_gets_a_new_run_with_its_own_figures(write_suite, tmp_path, cli, use_plugin):
    import os

    # fails while BENCH_TEST_FAIL is set: a failed cell, then the same cell run again and finishing
    use_plugin("flaky", 'if os.environ.get("BENCH_TEST_FAIL"): raise RuntimeError("flaky")')
    path = write_suite('[model]\narch = "bench:flaky"\n[log]\nmlflow = true\n')
    os.environ["BENCH_TEST_FAIL"] = "1"
    try:
        assert cli("run", path, "--results", tmp_path / "r")[0] == 1
    finally:
        del os.environ["BENCH_TEST_FAIL"]
    assert cli("run", path, "--results", tmp_path / "r")[0] == 0  # the failed cell runs again
    assert cli("run", path, "--results", tmp_path / "r", "--force")[0] == 0  # and once more, from scratch
    client, runs = _runs(tmp_path / "r")
    runs = sorted(runs, key=lambda r: r.info.start_time)
    assert [(r.info.status, r.data.tags["bench.status"]) for r in runs] == [
        ("FAILED", "failed"), ("FINISHED", "ok"), ("FINISHED", "ok")]
    assert "RuntimeError: flaky" in runs[0].data.tags["bench.reason"]
    [cell_dir] = [p.parent for p in (tmp_path / "r" / "tiny").glob("*/result.json")]
    record = json.loads((cell_dir / "result.json").read_text())
    assert record["trackers"][f"mlflow:sqlite:///{tmp_path / 'r' / 'mlflow.db'}"] == {"run": runs[-1].info.run_id}
    # the last run has the last attempt's own epochs (its timings are its own), not the one before's
    seconds = [m.value for m in sorted(client.get_metric_history(runs[-1].info.run_id, "train_seconds"),
                                       key=lambda m: m.step)]
    assert seconds == [float(r["train_seconds"]) for r in _history_csv(cell_dir)]
    assert seconds != [m.value for m in sorted(client.get_metric_history(runs[1].info.run_id, "train_seconds"),
                                               key=lambda m: m.step)]


def test_a_cell_another_bench_is_sending_is_left_to_it(write_suite, tmp_path, cli):
    from bench.locks import FileLock

    assert cli("run", write_suite(GRID), "--results", tmp_path / "r")[0] == 0
    held, free = sorted(p.parent for p in (tmp_path / "r" / "tiny").glob("*/cell.json"))
    with FileLock(held / ".trackers.lock"):  # as a `bench run` sending it would hold it
        code, _, err = cli("log", tmp_path / "r" / "tiny", "--to", "mlflow")
    assert code == 0 and "1 new run(s)" in err and "1 cell(s) left to the bench that is sending them" in err
    _, [run] = _runs(tmp_path / "r")
    assert run.data.tags["bench.cell_id"] == free.name and "trackers" not in json.loads(
        (held / "result.json").read_text())


def test_log_keys_set_on_the_command_line_leave_cell_ids_alone(write_suite):
    from bench import api

    path = write_suite(GRID)
    plain = [c.id for c in api.plan(path, check=False).cells]
    logged = api.plan(path, check=False, overrides=["log.mlflow=true", "log.wandb=offline", "log.project=x"])
    assert [c.id for c in logged.cells] == plain and logged.suite.log.wandb == "offline"


@pytest.mark.parametrize("predictions", [False, True])
def test_a_cells_files_go_with_its_figures_and_predictions_only_when_asked(tmp_path, predictions):
    from bench.config.suite import Log
    from bench.trackers.sync import _ending

    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    for name in ("result.json", "cell.json", "history.csv", "predictions.npz"):
        (cell_dir / name).write_text("")
    ending = _ending({"status": "diverged", "error": "loss is nan", "metrics": {"val": {"top1_error": 0.5}},
                      "cost": {"train_time_s": 2, "peak_cuda_mb": None}, "epochs_run": 3},
                     cell_dir, Log(predictions=predictions))
    assert sorted(p.name for p in ending.files) == sorted(
        ["result.json", "cell.json", "history.csv"] + (["predictions.npz"] if predictions else []))
    assert ending.summary == {"val.top1_error": 0.5, "cost.train_time_s": 2.0, "epochs_run": 3.0}
    assert (ending.status, ending.reason, ending.ok) == ("diverged", "loss is nan", False)
