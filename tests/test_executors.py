"""Executors: the same suite, with a staged cell, run one cell at a time, two at once (`--jobs 2`), as Ray
tasks on a local instance and as a submitit job array (its local executor) gives the same numbers bit for
bit; a killed job array resumes from the checkpoints; a failing cell on a worker is recorded and the others
finish."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from bench.cell import RunOptions
from bench.config import Resources, load_suite
from bench.executors import EXECUTORS, make_executor
from bench.suite import expand
from tests.support import bench, no_process_left, outputs, run_file, wait_for

SUITE = """
[suite]
name = "spread"
seeds = [0]

[data]
image_size = 16

[data.synthetic]
classes = 4
images = 160
size = 16

[train]
epochs = 3
batch_size = 16
optimizer = "adam"
lr = 0.003
augment = "crop_flip"

[model]
arch = "bench:mlp"

[[cells]]
label = "parent"

[[cells]]
label = "child"
"model.init_from" = "parent"
"train.lr" = 0.001

[[cells]]
label = "cnn"
"model.arch" = "bench:small_cnn"
"""

# On the CPU the last bits of a cell's numbers depend on torch's thread count (reductions split otherwise),
# so every run here uses one thread per cell, as `--jobs 2` on two cores does.
THREADS = 1


def _run(path: Path, results: Path, executor, **options) -> object:
    return run_file(path, results, options=RunOptions(threads=THREADS, **options), executor=executor,
                    log=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "spread.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def sequential(suite_file, tmp_path_factory):
    results = tmp_path_factory.mktemp("sequential")
    summary = _run(suite_file, results, make_executor("local", jobs=1))
    assert len(summary.ran) == 3 and not summary.failed
    return outputs(results / "spread")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this machine, CPU only, two workers: what `--executor ray` joins."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


# the Ray tests share one worker under pytest-xdist, and so one local Ray instance (local_ray, per module);
# Ray and Slurm start a fresh Python per task or job (20-35 s a test here, Ray's instance besides): their proofs
# run in the slow tier (`nox -s slow`, which CI runs too); the default tier keeps the local executor's
BY_EXECUTOR_REMOTE_SLOW = [pytest.param(name, marks=[*([pytest.mark.xdist_group("ray")] if name == "ray" else []),
                                                     *([pytest.mark.slow] if name != "local" else [])])
                           for name in sorted(EXECUTORS)]


def _executor(name: str, request) -> object:
    if name == "ray":
        request.getfixturevalue("local_ray")
        return make_executor("ray", jobs=2, resources=Resources(cpus=1))
    if name == "slurm":
        pytest.importorskip("submitit")
        return make_executor("slurm", jobs=2, resources=Resources(cpus=1))
    return make_executor(name, jobs=2)


@pytest.mark.parametrize("name", BY_EXECUTOR_REMOTE_SLOW)
def test_every_executor_gives_the_sequential_numbers_bit_for_bit(name, suite_file, sequential, tmp_path, request):
    executor = _executor(name, request)
    summary = _run(suite_file, tmp_path, executor)
    assert len(summary.ran) == 3 and not summary.failed, summary.failed
    suite_dir = tmp_path / "spread"
    assert outputs(suite_dir) == sequential
    prepared = json.loads((suite_dir / "run.json").read_text())["prepared"]  # first, by a CPU task of its own
    assert len(prepared["costs"]) == 3 and not prepared["failed"]
    assert (prepared["pid"] == os.getpid()) == (name == "local"), prepared
    records = {json.loads((p / "cell.json").read_text())["label"]: json.loads((p / "result.json").read_text())
               for p in suite_dir.iterdir() if (p / "result.json").is_file()}
    for record in records.values():  # which executor, host and device ran it, and with how many threads
        assert record["env"]["executor"] == name and record["env"]["threads"] == THREADS
        assert record["env"]["device"] == "cpu" and record["env"]["host"]
    parent_best = suite_dir / records["child"]["parent"]["id"] / "best.safetensors"
    from bench.hashing import file_digest

    assert records["child"]["parent"]["sha256"] == file_digest(parent_best)  # started from the finished parent
    again = _run(suite_file, tmp_path, _executor(name, request))  # a second launch runs nothing again
    assert sorted(again.skipped) == sorted(summary.ran) and not again.ran


def test_jobs_2_runs_cells_at_once_and_the_child_after_its_parent(tmp_path):
    # the parent trains long enough (20 epochs, about a second) that the other cell's process, started beside
    # it, trains while it does: spans come from the records, which time training alone
    path = tmp_path / "spread.toml"
    path.write_text(SUITE.replace('label = "parent"\n', 'label = "parent"\n"train.epochs" = 20\n'))
    _run(path, tmp_path, make_executor("local", jobs=2))
    suite_dir = tmp_path / "spread"
    spans = {}
    for p in suite_dir.iterdir():
        if (p / "result.json").is_file():
            label = json.loads((p / "cell.json").read_text())["label"]
            end = (p / "result.json").stat().st_mtime
            spans[label] = (end - json.loads((p / "result.json").read_text())["cost"]["wall_time_s"], end)
    assert spans["child"][0] >= spans["parent"][1] - 0.05  # the child trained only after the parent's record
    overlap = min(spans["cnn"][1], spans["parent"][1]) - max(spans["cnn"][0], spans["parent"][0])
    assert overlap > 0, spans  # two cells trained at the same time


def test_jobs_2_claims_name_the_process_that_trains_each_cell(tmp_path, monkeypatch, use_plugin):
    import bench.jobs
    from bench.claims import read_claim

    pids = tmp_path / "pids"  # the plugin's network leaves a file named after each process that trains it
    pids.mkdir()
    monkeypatch.setenv("PIDS", str(pids))
    use_plugin("pid", 'open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w").close()')
    path = tmp_path / "two.toml"
    path.write_text(FAILING.replace("seeds = [0]", "seeds = [0, 1]")
                    .replace('["bench:mlp", "bench:broken", "bench:small_cnn"]', '["bench:pid"]'))
    claimed = {}

    class Spy(bench.jobs.Quiet):  # in this process, as each cell's epochs come down its pipe
        def start_cell(self, index, total, label, cell_id, epochs, steps):
            self.cell = cell_id

        def epoch(self, row):
            claimed[self.cell] = read_claim(tmp_path / "fails" / self.cell)["pid"]

    monkeypatch.setattr(bench.jobs, "Quiet", Spy)
    summary = _run(path, tmp_path, make_executor("local", jobs=2))
    assert len(summary.ran) == 2 and not summary.failed, summary.failed
    assert len(set(claimed.values())) == 2 and os.getpid() not in claimed.values()
    assert {str(p) for p in claimed.values()} == {p.name for p in pids.iterdir()}


def test_the_cli_leaves_out_the_inception_and_ray_token_notices_and_only_those(cli, write_suite, monkeypatch):
    import logging
    import warnings

    import torchvision

    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")
    monkeypatch.setattr(setup.logger, "filters", [])  # as before this test, after it
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    monkeypatch.setattr(setup.logger, "handlers", [handler])
    with warnings.catch_warnings(record=True) as seen:  # the filters as they were, after it
        warnings.simplefilter("always")
        assert cli("plan", write_suite())[0] == 0
        torchvision.models.googlenet(weights=None, aux_logits=False, num_classes=2, init_weights=None)
        warnings.warn("another notice of a future change", FutureWarning, stacklevel=1)
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()  # a notice that says something: it stays
    assert [str(w.message) for w in seen if w.category is FutureWarning] == ["another notice of a future change"]
    assert len(logged) == 1 and logged[0].startswith("Token authentication is disabled")


FAILING = """
[suite]
name = "fails"
seeds = [0]

[data]
image_size = 16

[data.synthetic]
classes = 4
images = 80
size = 16

[train]
epochs = 1
batch_size = 16

[grid]
"model.arch" = ["bench:mlp", "bench:broken", "bench:small_cnn"]
"""


@pytest.mark.parametrize("name", BY_EXECUTOR_REMOTE_SLOW)
def test_a_cell_failing_on_a_worker_is_recorded_and_the_others_finish(name, tmp_path, cli, request, use_plugin):
    if name == "ray":
        request.getfixturevalue("local_ray")
    if name == "slurm":
        pytest.importorskip("submitit")
    use_plugin("broken", "raise RuntimeError('boom in the worker')")  # for the workers, and for this process
    path = tmp_path / "fails.toml"
    path.write_text(FAILING)
    code, out, err = cli("run", path, "--results", tmp_path / "r", "--executor", name, "--jobs", "2")
    assert code == 1, err
    states = {json.loads((p / "cell.json").read_text())["label"]: json.loads((p / "result.json").read_text())
              for p in (tmp_path / "r" / "fails").iterdir() if (p / "result.json").is_file()}
    assert states["arch=bench:broken"]["status"] == "failed"
    assert "boom in the worker" in states["arch=bench:broken"]["error"]
    assert states["arch=bench:mlp"]["status"] == states["arch=bench:small_cnn"]["status"] == "ok"
    assert "1 failed" in err and "2 ran" in err


@pytest.mark.slow
def test_a_killed_job_array_resumes_from_its_checkpoints_when_resubmitted(tmp_path):
    pytest.importorskip("submitit")
    path = tmp_path / "spread.toml"
    path.write_text(SUITE.replace("epochs = 3", "epochs = 5").replace("images = 160", "images = 320"))
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    results = tmp_path / "r"
    args = ("run", str(path), "--results", str(results), "--executor", "slurm", "--threads", str(THREADS))
    proc = bench(*args, env=env)
    wait_for(lambda: any(_epoch(p) >= 2 for p in results.glob("spread/*/checkpoint.json")), proc,
             "a job's second epoch checkpoint", timeout=300)
    os.killpg(proc.pid, signal.SIGKILL)  # bench, submitit's job controllers and the cells' processes
    proc.wait()
    assert no_process_left(proc.pid)
    # resubmitted from here: the same jobs, each a process of submitit's as the killed ones were
    rerun = _run(path, results, make_executor("slurm", jobs=1))
    assert not rerun.failed, rerun.failed
    records = [json.loads(p.read_text()) for p in results.glob("spread/*/result.json")]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records), records
    assert any((r["train"].get("resumed_at_epoch") or 0) >= 2 for r in records), "no cell resumed"
    reference = tmp_path / "reference"
    _run(path, reference, make_executor("local", jobs=1))
    assert outputs(results / "spread") == outputs(reference / "spread")


def _epoch(info: Path) -> int:
    try:
        return json.loads(info.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_status_shows_a_queued_job_and_a_report_of_a_run_in_progress_says_partial(suite_file, tmp_path, cli):
    spec = load_suite(suite_file)
    cells = expand(spec)
    _run(suite_file, tmp_path, make_executor("local", jobs=1))
    suite_dir = tmp_path / "spread"
    victim = cells[-1]
    (suite_dir / victim.id / "result.json").unlink()  # as if its job were still waiting in a queue
    (suite_dir / victim.id / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "4242_2",
                                                                "cluster": "slurm", "submitted": 0}))
    code, out, _ = cli("status", suite_dir)
    assert code == 0 and "queued" in out and "slurm job 4242_2" in out
    code, out, _ = cli("report", suite_dir)
    assert code == 0 and "partial: 2 of the 3 cells of the last run have finished" in out


def test_unknown_executor_and_missing_extras_are_one_line(tmp_path, cli, suite_file, monkeypatch):
    code, _, err = cli("run", suite_file, "--results", tmp_path, "--executor", "dask")
    assert code == 2 and "dask" in err
    code, _, err = cli("run", suite_file, "--results", tmp_path, "--in-process", "--jobs", "2")
    assert code == 2 and "--in-process" in err and "Traceback" not in err
    code, _, err = cli("run", suite_file, "--results", tmp_path, "--sbatch", "qos")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = cli("run", suite_file, "--results", tmp_path / "t", "--time-min", "0")
    assert code == 2 and "--time-min" in err and "greater than 0" in err and not (tmp_path / "t").exists()
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = cli("run", suite_file, "--results", tmp_path / "r", "--executor", "ray")
    assert code == 2 and "pip install -e '.[ray]'" in err and "Traceback" not in err


def test_resources_table_is_validated(tmp_path, cli):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(SUITE) + "\n[resources]\ngpu = 1\n")
    code, _, err = cli("plan", path)
    assert code == 2 and "resources.gpu: unknown key" in err and "gpus" in err
    path.write_text(textwrap.dedent(SUITE) + '\n[resources]\ngpus = 1\npartition = "a100"\ntime_min = 240\n'
                    '[resources.sbatch]\nqos = "high"\n')
    assert load_suite(path).resources == Resources(gpus=1, partition="a100", time_min=240, sbatch={"qos": "high"})
    assert {c.id for c in expand(load_suite(path))} == {c.id for c in expand(load_suite_text(tmp_path, SUITE))}


def load_suite_text(tmp_path: Path, text: str):
    other = tmp_path / "plain.toml"
    other.write_text(text)
    return load_suite(other)


def test_slurm_jobs_get_the_resources_as_sbatch_options(tmp_path, monkeypatch):
    """The sbatch script submitit would submit on a cluster (srun stands in, so submitit takes this for one)."""
    submitit = pytest.importorskip("submitit")
    import torch

    from bench.executors import Slurm

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    resources = Resources(gpus=2, cpus=8, memory_gb=32, partition="a100", account="lab", time_min=600,
                          sbatch={"qos": "high"})
    ex, _ = Slurm(jobs=4, resources=resources)._executor(tmp_path, torch.device("cuda"), 5)
    assert isinstance(ex, submitit.AutoExecutor) and ex.cluster == "slurm"
    script = ex._executor._make_submission_file_text("python -m bench", "uid")
    # two GPUs per cell: two ranks, a task each with half the cell's CPUs
    for line in ("#SBATCH --partition=a100", "#SBATCH --account=lab", "#SBATCH --time=600",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=32GB",
                 "#SBATCH --qos=high", "#SBATCH --job-name=bench-"):
        assert line in script, (line, script)


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("process groups and /proc as on Linux")


def test_ray_connects_once_per_run_and_ends_only_the_instance_it_started(monkeypatch):
    """Every wave of a tuned suite calls run(): one ray.init for all of them, one shutdown as the run ends."""
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: "init" in calls and "shutdown" not in calls)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with make_executor("ray") as executor:
        executor._ray()
        executor._ray()
        assert calls == ["init"]
    assert calls == ["init", "shutdown"]
    calls.clear()
    calls.append("init")  # an instance someone else started (a cluster joined): left as it was
    with make_executor("ray") as executor:
        executor._ray()
    assert calls == ["init"]
