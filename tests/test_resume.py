"""Cells that survive a kill: epoch checkpoints resume bitwise, one process per cell, claims."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import bench, no_process_left, outputs, run_file, wait_for

# Enough epochs and images that a kill lands inside training, with augmentation, dropout-free mixing and a
# schedule: every random state a resumed epoch draws from is exercised.
SUITE = """
[suite]
name = "resume"
seeds = [0]

[data]
image_size = 16

[data.synthetic]
classes = 4
images = 240
size = 16

[train]
epochs = 5
batch_size = 8
optimizer = "sgd"
lr = 0.01
schedule = "cosine"
augment = "crop_flip"
mix = "mixup"

[grid]
"model.arch" = ["bench:small_cnn", "bench:mlp"]
"""


EPOCHS = 5
# One torch thread for every run here, in a `bench run` process or in this one: the last bits of a cell's
# numbers depend on the thread count, and the runs compared bit for bit must agree on it.
THREADS = ("--threads", "1")


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "resume.toml"
    path.write_text(SUITE)
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    return path, env


def run_here(path: Path, results: Path, log=None):
    """`bench run PATH --in-process --threads 1`, in this process: what a rerun does with the files a killed
    run left (the kills themselves need a `bench run` process of their own)."""
    from bench.cell import RunOptions

    return run_file(path, results, options=RunOptions(isolate=False, threads=1), log=log or open(os.devnull, "w"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    path = tmp / "resume.toml"
    path.write_text(SUITE)
    summary = run_here(path, tmp / "r")
    assert len(summary.ran) == 2 and not summary.failed, summary.failed
    return outputs(tmp / "r" / "resume")


def new_checkpoints(results: Path, after: float = 0.0):
    """A condition: some cell wrote a checkpoint since this was made (then wait `after` seconds)."""
    def stamp() -> dict:
        found = {}
        for info in results.glob("resume/*/checkpoint.json"):
            try:
                found[info] = info.stat().st_mtime_ns
            except OSError:
                pass
        return found
    before = stamp()

    def seen() -> bool:
        if stamp() != before and any(v != before.get(k) for k, v in stamp().items()):
            time.sleep(after)
            return True
        return False
    return seen


@pytest.mark.slow  # 34 s: in the slow tier, which CI runs; the default tier keeps SIGINT/SIGTERM stops resumed
def test_a_run_killed_at_any_moment_resumes_bitwise(suite, tmp_path, reference):
    path, env = suite
    results = tmp_path / "r"
    # each in a fresh run that resumes what the kills before it left; the cells train in the bench process
    # (--in-process: one import, not two) but mid-epoch and at a result write, where the kill takes a cell's
    # own process with it
    moments = {
        "data preparation": (lambda: (lambda: (results / "resume" / "suite.toml").is_file()), "--in-process"),
        "right after a checkpoint": (lambda: new_checkpoints(results), "--in-process"),
        "mid-epoch": (lambda: new_checkpoints(results, after=0.05), None),
        "a result write": (lambda: (lambda: any(results.glob("resume/*/predictions.npz"))), None),
    }
    for moment, (condition, how) in moments.items():
        proc = bench("run", str(path), "--results", str(results), *THREADS, *filter(None, [how]), env=env)
        wait_for(condition(), proc, moment)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: bench, its fork server and the cell's process
        proc.wait()
    finished = {p.parent for p in results.glob("resume/*/result.json")
                if json.loads(p.read_text()).get("status") == "ok"}
    stream = io.StringIO()
    summary = run_here(path, results, stream)  # the run after the kills, here
    log = stream.getvalue()
    assert not summary.failed and not summary.busy, log
    assert outputs(results / "resume") == reference
    resumed = [json.loads(p.read_text())["train"]["resumed_at_epoch"] for p in results.glob("resume/*/result.json")
               if p.parent not in finished]  # the cells the last run trained
    assert any(r is not None for r in resumed) or finished, "the last run resumed no cell: the kills came too late to test anything"
    # no epoch trained twice past its checkpoint: the last run trains only what the checkpoints lacked
    assert log.count("epoch ") == sum(EPOCHS - (r or 0) for r in resumed), log
    assert not list(results.glob("resume/*/checkpoint.pt")), "checkpoints are removed once a cell is done"


def test_killing_only_the_parent_ends_the_cell_process(suite, tmp_path):
    path, env = suite
    results = tmp_path / "r"
    proc = bench("run", str(path), "--results", str(results), *THREADS, env=env)
    wait_for(new_checkpoints(results), proc)
    claim = next(results.glob("resume/*/claim.json"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert no_process_left(proc.pid), "a process of the killed run lived on"
    # its claim names a dead process: the next run (here) takes the cell over
    rerun = run_here(path, results)
    assert not rerun.failed and claim.parent.name in rerun.ran
    assert not claim.exists()


@pytest.mark.parametrize("sig, cause", [("SIGSEGV", "native code"), ("SIGKILL", "out-of-memory killer")])
def test_a_cell_whose_process_dies_is_recorded_and_the_suite_goes_on(tmp_path, sig, cause, cli, use_plugin):
    # dies as a broken native kernel or the OOM killer would end it, on its first training step: in the
    # cell's own process, which `bench run` (here, in this process) starts for every cell
    use_plugin(f"crash_{sig}", f"os.kill(os.getpid(), signal.{sig})")
    path = tmp_path / "crash.toml"
    path.write_text(SUITE.replace('"bench:small_cnn", "bench:mlp"', f'"bench:crash_{sig}", "bench:small_cnn"')
                    .replace("epochs = 5", "epochs = 1").replace('name = "resume"', 'name = "crash"'))
    code, _, log = cli("run", path, "--results", tmp_path / "r", *THREADS)
    assert code == 1, log
    records = {json.loads((p / "cell.json").read_text())["label"]: json.loads((p / "result.json").read_text())
               for p in (tmp_path / "r" / "crash").iterdir() if (p / "result.json").is_file()}
    crashed, fine = records[f"arch=bench:crash_{sig}"], records["arch=bench:small_cnn"]
    assert crashed["status"] == "crashed" and sig in crashed["error"] and cause in crashed["error"]
    assert crashed["exitcode"] == -getattr(signal, sig)
    assert fine["status"] == "ok"
    assert f"CRASHED: arch=bench:crash_{sig}" in log  # the failure line names the cell


# ------------------------------------------------------------------------------------------ claims
def _one_cell(write_suite):
    from bench.config import load_suite
    from bench.suite import expand

    path = write_suite()
    return path, expand(load_suite(path))[0]


def test_a_cell_claimed_by_a_live_process_is_left_to_it(write_suite, tmp_path):
    from bench.claims import Claim

    path, cell = _one_cell(write_suite)
    owner = Claim(tmp_path / "r" / "tiny" / cell.id, epochs=2)
    assert owner.acquire()
    summary = run_file(path, tmp_path / "r")
    assert summary.busy == [cell.id] and not summary.ran
    assert not (tmp_path / "r" / "tiny" / cell.id / "result.json").exists()
    owner.release()
    assert run_file(path, tmp_path / "r").ran == [cell.id]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("claim, taken", [
    ({"pid": "dead"}, True),  # this host, its process gone (and its lock with it)
    ({"host": "elsewhere", "heartbeat_age": 5}, False),  # another machine, beating
    ({"host": "elsewhere", "heartbeat_age": 3600}, True),  # another machine, silent for an hour
])
def test_stale_claims_are_taken_over_and_live_ones_are_not(write_suite, tmp_path, claim, taken):
    from bench.claims import HOST

    path, cell = _one_cell(write_suite)
    cell_dir = tmp_path / "r" / "tiny" / cell.id
    cell_dir.mkdir(parents=True)
    now = time.time()
    record = {"host": claim.get("host", HOST), "pid": _dead_pid() if claim.get("pid") == "dead" else os.getpid(),
              "started": now - 7200, "heartbeat": now - claim.get("heartbeat_age", 0), "epoch": 1, "epochs": 2}
    (cell_dir / "claim.json").write_text(json.dumps(record))
    summary = run_file(path, tmp_path / "r")
    assert (summary.ran == [cell.id]) is taken and (summary.busy == [cell.id]) is not taken
    assert (cell_dir / "claim.json").exists() is not taken  # a finished run leaves no claim behind


def test_two_runs_at_once_run_each_cell_once(suite, tmp_path, cli):
    path, env = suite
    path.write_text(SUITE.replace("epochs = 5", "epochs = 2").replace(
        '"model.arch" = ["bench:small_cnn", "bench:mlp"]', '"model.arch" = ["bench:small_cnn", "bench:mlp"]\n'
                                                           '"train.lr" = [0.01, 0.003]'))
    results = tmp_path / "r"
    # the claims, not process isolation, are what this is about: the cells train in the two bench processes
    runs = [bench("run", str(path), "--results", str(results), "--in-process", *THREADS, env=env)
            for _ in range(2)]
    logs = [p.communicate()[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], logs
    trained = sum(log.count("epoch 1:") for log in logs)
    done = [json.loads(p.read_text()) for p in results.glob("resume/*/result.json")]
    assert len(done) == 4 and all(r["status"] == "ok" for r in done)
    # a cell the other run held is skipped, then found finished: four cells, each trained once
    assert trained == 4, logs
    code, out, err = cli("report", results / "resume", "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 5, err


# ------------------------------------------------------------------------------------------ failures
def test_a_diverging_cell_is_a_result_not_a_crash(write_suite, tmp_path, cli):
    path = write_suite('[grid]\n"train.lr" = [0.003, 1e6]\n')
    path.write_text(path.read_text().replace('optimizer = "adam"', 'optimizer = "sgd"'))
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    assert code == 1
    records = {json.loads((p / "cell.json").read_text())["label"]: json.loads((p / "result.json").read_text())
               for p in (tmp_path / "r" / "tiny").iterdir() if (p / "result.json").is_file()}
    bad = records["lr=1000000.0"]
    assert bad["status"] == "diverged" and bad["epoch"] == 1 and len(bad["history"]) == 1
    assert "diverged at epoch 1" in bad["error"] and "lower train.lr" in bad["error"]
    assert "DIVERGED: lr=1000000.0" in err
    code, out, _ = cli("report", tmp_path / "r" / "tiny")
    assert code == 0 and "diverged: " in out and "| 0.003 " in out


def test_status_says_where_each_cell_stands(write_suite, tmp_path, cli):
    from bench.checkpoint import CHECKPOINT_INFO

    path = write_suite('[grid]\n"train.lr" = [0.01, 0.003, 0.001, 0.0003]\n')
    code, _, _ = cli("run", path, "--results", tmp_path / "r", "--only", "lr=0.01")
    assert code == 0
    from bench.config import load_suite
    from bench.suite import expand

    cells = {c.label: c for c in expand(load_suite(path))}
    folder = tmp_path / "r" / "tiny"
    resumable = folder / cells["lr=0.003"].id
    resumable.mkdir()
    (resumable / CHECKPOINT_INFO).write_text('{"epoch": 1, "epochs": 2}')
    failed = folder / cells["lr=0.001"].id
    failed.mkdir()
    (failed / "result.json").write_text('{"status": "oom", "error": "out of memory at train.batch_size 16"}')
    code, out, err = cli("status", path, "--results", tmp_path / "r")
    assert code == 0
    lines = {line.split("|")[2].strip(): line for line in out.splitlines()[2:]}
    assert "done" in lines["lr=0.01"] and "val_error" in lines["lr=0.01"]
    assert "resumable" in lines["lr=0.003"] and "at epoch 1" in lines["lr=0.003"]
    assert "oom" in lines["lr=0.001"] and "batch_size 16" in lines["lr=0.001"]
    assert "not started" in lines["lr=0.0003"]
    assert "1 done, 1 resumable, 1 oom, 1 not started" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_cleanly_and_leaves_the_cell_resumable(suite, tmp_path, sig):
    path, env = suite
    results = tmp_path / "r"
    proc = bench("run", str(path), "--results", str(results), *THREADS, env=env)
    wait_for(new_checkpoints(results), proc, "a checkpoint")
    # Ctrl-C reaches the terminal's whole process group; a scheduler's SIGTERM, the bench process
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else os.kill(proc.pid, sig)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted; run the same command again to resume" in out
    assert list(results.glob("resume/*/checkpoint.pt")) and not list(results.glob("resume/*/claim.json"))
    assert no_process_left(proc.pid), "a process of the interrupted run lived on"


# ------------------------------------------------------------------- resume, technique by technique
class StopAt:
    """Progress that interrupts the run as epoch `at` ends (before its checkpoint: the kill loses it)."""

    def __init__(self, at: int | None):
        from bench.progress import LogProgress

        self.at, self.log = at, LogProgress(open(os.devnull, "w"))

    def __getattr__(self, name):
        return getattr(self.log, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def epoch(self, row):
        if row["epoch"] == self.at:
            raise KeyboardInterrupt


TECHNIQUES = {
    # every state a resumed epoch depends on, a few at a time
    "ema-plateau-early-stopping": 'ema = true\nschedule = "plateau"\nplateau_patience = 1\npatience = 3\n',
    "balanced-sampler-cutmix-randaugment": 'sampler = "balanced"\nmix = "cutmix_mixup"\n'
                                           'augment = [{op = "randaugment", magnitude = 7}]\n',
    "accumulate-clip-warmup-onecycle": 'accumulate = 2\nclip_grad = 1.0\nschedule = "onecycle"\n',
    "device-augment": 'augment = ["rrc", "hflip", "jitter"]\naugment_on = "device"\n',
}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_resume_is_bitwise_whatever_the_technique(write_suite, tmp_path, technique, monkeypatch):
    import math

    from bench import api, checkpoint
    from bench.cell import RunOptions

    # these epochs last milliseconds, which the spacing rule would save only now and then: save every one,
    # so that the run resumes at a known epoch
    monkeypatch.setattr(checkpoint, "MAX_SHARE", math.inf)

    path = write_suite()
    text = path.read_text().replace("epochs = 2", "epochs = 5").replace('optimizer = "adam"',
                                                                         'optimizer = "adamw"')
    path.write_text(text.replace("[train]\n", "[train]\n" + TECHNIQUES[technique]))
    planned = api.plan(path, check=False)
    in_process = RunOptions(isolate=False)

    def run(results, stop=None):
        return api.run(planned, results=results, device="cpu", progress=StopAt(stop), options=in_process)

    run(tmp_path / "whole")
    for stop in (2, 4):  # two interruptions, each losing the epoch it came in
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "cut", stop)
    assert run(tmp_path / "cut").ran
    whole, cut = (outputs(tmp_path / r / "tiny") for r in ("whole", "cut"))
    assert cut == whole
    record = json.loads(next((tmp_path / "cut" / "tiny").glob("*/result.json")).read_text())
    assert record["train"]["resumed_at_epoch"] == 3


def test_checkpoints_are_spaced_so_that_writing_them_costs_at_most_5_percent(tmp_path, monkeypatch):
    import torch

    from bench import checkpoint as ck

    now = [100.0]
    monkeypatch.setattr(ck.time, "perf_counter", lambda: now[0])
    real_save = ck.torch.save

    def slow_save(*args, **kwargs):  # a write that takes 0.5 s of the fake clock
        now[0] += 0.5
        real_save(*args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", slow_save)
    c = ck.Checkpoint(tmp_path, "fingerprint", 10)
    assert c.due()  # the first epoch is always saved
    c.save(1, {"w": torch.zeros(2)})
    assert (c.seconds, c.saves) == (0.5, 1)
    now[0] += 0.5 / ck.MAX_SHARE - 0.01  # epochs since: a little less than 40 writes' worth
    assert not c.due()
    now[0] += 0.02
    assert c.due()
    assert ck.saved_epoch(tmp_path) == 1


# ------------------------------------------------------------------------------------------ a full disk
# A cell's process on a results disk that fills up at one file (FULL_AT) while FULL_DISK (the results folder)
# is set, each writer failing in its own words: torch.save's checkpoint as torch says it, a record as Python
# does (ENOSPC, naming no file); the file system then has no block left to give, and a cell's own process
# (BENCH_EXECUTOR set) nothing more for its stderr.log. The plugin acts only while FULL_DISK is set, because
# a fork server that preloaded it serves later tests too.
FULL_DISK = '''
import errno
import os
import pathlib

import torch


def _full(path):
    path = pathlib.Path(path)
    return "FULL_DISK" in os.environ and str(path).startswith(os.environ["FULL_DISK"]) and \\
        path.name.startswith("." + os.environ["FULL_AT"] + ".")


def _log_full():
    if "BENCH_EXECUTOR" in os.environ:  # a cell's own process: its stderr.log takes nothing more either
        os.dup2(os.open(os.devnull, os.O_RDONLY), 2)


def _no_space():
    _log_full()
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


save, write_bytes, fallocate = torch.save, pathlib.Path.write_bytes, os.posix_fallocate


def full_save(obj, f, *args, **kwargs):
    if _full(f):
        with open(f, "wb") as partial:
            partial.write(b"PK")
        _log_full()
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7616 vs 7510")
    return save(obj, f, *args, **kwargs)


def full_write_bytes(self, data):
    if _full(self):
        raise _no_space()
    return write_bytes(self, data)


def full_fallocate(fd, offset, length):
    if "FULL_DISK" in os.environ and os.readlink(f"/proc/self/fd/{fd}").startswith(os.environ["FULL_DISK"]):
        raise _no_space()
    return fallocate(fd, offset, length)


torch.save, pathlib.Path.write_bytes, os.posix_fallocate = full_save, full_write_bytes, full_fallocate
'''


@pytest.mark.parametrize("words, room, full", [
    ("basic_ios::clear: iostream error", True, False),  # torch.save's words for it: a full disk when it is full
    ("basic_ios::clear: iostream error", False, True),
    ("Error while serializing: I/O error: No space left on device (os error 28)", True, True),  # safetensors'
])
def test_a_writer_failing_in_its_own_words_is_a_full_disk_when_it_is_one(tmp_path, monkeypatch, words, room, full):
    import errno

    from bench.store import atomic_dir, atomic_path

    def no_block(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if not room:
        monkeypatch.setattr(os, "posix_fallocate", no_block)
    for target, atomic in ((tmp_path / "cell" / "checkpoint.pt", atomic_path), (tmp_path / "cache" / "x", atomic_dir)):
        with pytest.raises(OSError if full else RuntimeError) as caught, atomic(target):
            raise RuntimeError(words)
        assert not full or (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
        assert list(target.parent.iterdir()) == []  # nothing half-written left


@pytest.mark.parametrize("at", ["checkpoint.pt", "result.json"])
@pytest.mark.parametrize("where", ["cell process", "in-process"])
def test_a_full_results_disk_stops_the_run_naming_its_folder_and_free_space_and_a_rerun_is_bitwise(
        write_suite, tmp_path, cli, monkeypatch, at, where):
    import pathlib
    import shutil

    import torch
    from rich.filesize import decimal

    from bench.models.plugins import load_plugins

    results, path = tmp_path / "r", write_suite()
    run = ("run", path, "--results", results, *THREADS, *(["--in-process"] if where == "in-process" else []))
    for owner, name in ((torch, "save"), (pathlib.Path, "write_bytes"), (os, "posix_fallocate")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # as they are now, whatever the plugin does here
    usage, free = shutil.disk_usage, 123_456_789

    def disk_usage(folder):  # the results folder's own disk, and another one above it
        found = usage(folder)
        return type(found)(found.total, found.used, free if str(folder).startswith(str(results)) else found.free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    (tmp_path / "full_disk.py").write_text(FULL_DISK)
    monkeypatch.setenv("BENCH_PLUGINS", str(tmp_path / "full_disk.py"))
    monkeypatch.setenv("FULL_DISK", str(results))
    monkeypatch.setenv("FULL_AT", at)
    load_plugins()  # here as a `bench run` process does, and in each cell's process
    code, out, err = cli(*run)
    assert code == 1 and "Traceback" not in out + err
    (cell,) = [p for p in (results / "tiny").iterdir() if (p / "cell.json").is_file()]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {cell}: no space left on the device, {decimal(free)} are free; free some space there, or point "
        "$BENCH_CACHE (caches) or --results (records) at a larger disk"]
    assert not (cell / "result.json").exists() and not list(cell.glob(".*.tmp*"))
    if where == "cell process":  # its own words, in the log it could not write itself
        assert "No space left on device" in (cell / "stderr.log").read_text()
    monkeypatch.delenv("FULL_DISK")  # space freed
    assert cli(*run)[0] == 0
    assert cli("run", path, "--results", tmp_path / "clean", *THREADS)[0] == 0
    assert outputs(results / "tiny") == outputs(tmp_path / "clean" / "tiny")


def test_a_cell_process_that_cannot_write_its_record_says_why_in_the_record_and_its_log(write_suite, tmp_path,
                                                                                       cli, monkeypatch):
    import pathlib

    # in a cell's own process (BENCH_EXECUTOR set), result.json cannot be written, not even a failure's, while
    # READ_ONLY is set (a fork server that preloaded the plugin serves later tests too)
    plugin = tmp_path / "read_only.py"
    plugin.write_text("import os\nimport pathlib\n\nwrite_bytes = pathlib.Path.write_bytes\n\n\n"
                      "def refuse(self, data):\n"
                      "    if {'BENCH_EXECUTOR', 'READ_ONLY'} <= set(os.environ) and self.name.startswith('.result.json.'):\n"
                      "        raise PermissionError(13, 'Permission denied', str(self))\n"
                      "    return write_bytes(self, data)\n\n\n"
                      "pathlib.Path.write_bytes = refuse\n")
    monkeypatch.setattr(pathlib.Path, "write_bytes", pathlib.Path.write_bytes)  # should this process load it
    monkeypatch.setenv("BENCH_PLUGINS", str(plugin))
    monkeypatch.setenv("READ_ONLY", "1")
    code, _, err = cli("run", write_suite(), "--results", tmp_path / "r", *THREADS)
    assert code == 1
    (cell,) = [p for p in (tmp_path / "r" / "tiny").iterdir() if (p / "result.json").is_file()]
    record = json.loads((cell / "result.json").read_text())
    assert record["status"] == "crashed" and "PermissionError: [Errno 13] Permission denied" in record["error"]
    assert "Permission denied" in err.split("CRASHED:")[1]
    log = (cell / "stderr.log").read_text()
    assert "Traceback" in log and "Permission denied" in log and "Permission denied" in record["stderr_tail"][-1]
