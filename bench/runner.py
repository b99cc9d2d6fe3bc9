"""Runs cells: claims, seeding, shared initial weights, checkpoints and resume, failure records, cost
accounting, results."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import platform
import random
import resource
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model, save_model

import bench
from bench.artefacts import sealed_digest
from bench.checkpoint import Checkpoint
from bench.claims import Claim, claim_live, read_claim
from bench.cost import forward_gflops
from bench.data import prepare
from bench.data.loaders import Preprocess, make_loaders
from bench.errors import UserError
from bench.features import feature_setup
from bench.hashing import stable_hash
from bench.metrics import confusion_matrix, full_metrics
from bench.models.freeze import apply_freeze, count_params
from bench.progress import LogProgress
from bench.store import RUN, atomic_path, atomic_write_text, read_json, write_json, write_npz
from bench.suite import Cell
from bench.techniques import build_augment, build_tta
from bench.train import Diverged, Pruned, fit, precision_setup, predict, steps_per_epoch
from bench.weights import initial_model, load_parent


@dataclass
class RunSummary:
    suite_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell id, one-line error)
    busy: list[str] = field(default_factory=list)  # claimed by another live process


@dataclass(frozen=True)
class TrialSpec:
    """A tuning trial's part in its cell's run (bench.tune owns the rest): wherever the cell runs, it trains on
    validation only, and with a pruner reports every epoch to its study. Plain data, so that unpickling it
    in a cell's process imports nothing."""
    contender: str  # the contender's cell id, which is also its study's name
    number: int  # the trial's number in that study
    params: dict[str, Any]  # the sampled values, by dotted key
    journal: str  # the study's journal file (absolute)
    pruner: str = "none"
    warmup_epochs: int = 1
    startup_trials: int = 5  # the median pruner's n_startup_trials
    metric: str = "val_error"


@dataclass(frozen=True)
class RunOptions:
    """How cells run, as opposed to what they are: nothing here changes a cell's id. On the CPU, `threads`
    can change the last bits of a cell's numbers (reductions split otherwise): each record says how many."""
    force: bool = False  # rerun finished cells, from epoch 1
    checkpoint: bool = True  # save every epoch, and resume from the last
    keep_checkpoint: bool = False  # keep checkpoint.pt once the cell has finished
    isolate: bool = True  # each cell in a child process, so a crash is that cell's record
    threads: int | None = None  # torch threads per cell; None: torch's default (every core)
    # cell id -> its tuning trial (bench.tune): trained on validation only, its epochs reported to its study
    trials: Mapping[str, TrialSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt at a cell, small and picklable: it travels back from Ray and Slurm workers."""
    cell: str
    # ok | failed | diverged | pruned | oom | crashed | skipped (finished earlier) | busy (running elsewhere)
    state: str
    detail: str = ""  # the one-line error, why it was skipped, or its errors


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device", hint="use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps, but torch sees no MPS device", hint="use --device auto or cpu")
    return torch.device(name)


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """--only GLOB matches a cell's id or label."""
    if not only:
        return cells
    return [c for c in cells if fnmatch.fnmatch(c.id, only) or fnmatch.fnmatch(c.label, only)]


def is_done(cell_dir: Path) -> bool:
    try:
        return read_json(cell_dir / "result.json").get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return False


def run_suite(suite_text: str, name: str, cells: list[Cell], results: Path, *, device: str = "auto",
              progress: LogProgress | None = None, options: RunOptions | None = None,
              executor: Any = None) -> RunSummary:
    """Run `cells` (in order, or as `executor` spreads them; parents always before their children). A cell
    another live process has claimed is left to it; a finished one is skipped; an unfinished one goes on
    from its checkpoint. One cell's failure is its record, and the suite goes on; KeyboardInterrupt (or
    SIGTERM) stops the suite, leaving every checkpoint resumable."""
    from bench.executors import Local

    options = options or RunOptions()
    progress = progress or LogProgress()
    executor = executor or Local()
    suite_dir = Path(results).resolve() / name
    chosen = {c.id for c in cells}
    for c in cells:
        if c.parent and c.parent not in chosen and not is_done(suite_dir / c.parent):
            raise UserError(f"cell '{c.label}' starts from cell {c.parent} (model.init_from = "
                            f"'{c.config.model.init_from}'), which has not finished", key="model.init_from",
                            hint="run the parent cell first, or widen --only to include it")
    dev = resolve_device(device)  # before anything is written
    suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(suite_dir / "suite.toml", suite_text)
    write_json(suite_dir / RUN, {"cells": [c.id for c in cells], "executor": executor.name, "started": time.time()})
    summary = RunSummary(suite_dir)
    into = {"ok": summary.ran, "skipped": summary.skipped, "busy": summary.busy}
    if executor.parallel:  # many cells at once: one view of the suite, read from its folders
        from bench.progress import LiveView

        progress = LiveView(suite_dir, cells, getattr(progress, "console", None), progress.stream)
    with progress, _sigterm_interrupts():
        progress.start_run(len(cells), name)
        for outcome in executor.run(cells, suite_dir, dev, progress, options):
            if outcome.state in into:
                into[outcome.state].append(outcome.cell)
            else:
                summary.failed.append((outcome.cell, outcome.detail))
    return summary


def attempt(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress, index: int, total: int,
            options: RunOptions, env: dict[str, str] | None = None) -> Outcome:
    """Claim `cell` and run it in a child process (or here), or say why not. Every executor's worker calls
    this, so the claim — not the executor — decides that one cell runs once."""
    def skip(state: str, why: str) -> Outcome:
        progress.start_cell(index, total, cell.label, cell.id, 1, 1)
        progress.end_cell("skipped", why)
        return Outcome(cell.id, state, why)

    cell_dir = suite_dir / cell.id
    if is_done(cell_dir) and not options.force:
        return skip("skipped", "finished earlier (--force reruns it)")
    claim = Claim(cell_dir, cell.config.train.epochs)
    if not claim.acquire():
        return skip("busy", f"running elsewhere ({_owner(cell_dir)})")
    try:
        if is_done(cell_dir) and not options.force:
            return skip("skipped", "finished by another run meanwhile")
        if cell.parent and not is_done(suite_dir / cell.parent) and claim_live(read_claim(suite_dir / cell.parent)):
            return skip("busy", f"its parent {cell.parent} is running elsewhere")
        if options.isolate:
            from bench.worker import run_in_child

            record = run_in_child(cell, suite_dir, device, progress, index, total, options, claim, env)
        else:
            with _heartbeat(claim):
                record = execute(cell, suite_dir, device, progress, index, total, options, claim)
    finally:
        claim.release()
    if record["status"] == "ok":
        test = record["metrics"].get("test", {})  # none for a tuning trial
        detail = f"val_error {record['metrics']['val']['top1_error']:.4f}" + \
            (f" test_error {test['top1_error']:.4f}" if test else "")
        progress.end_cell("ok", detail)
        return Outcome(cell.id, "ok", detail)
    progress.end_cell(record["status"].upper(), f"{cell.label} ({cell.id}): {record['error']}")
    return Outcome(cell.id, record["status"], record["error"])


@contextlib.contextmanager
def _heartbeat(claim: Claim):
    """Keep a claim's heartbeat fresh while its cell runs in this process (epochs may outlast STALE_AFTER_S)."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            claim.beat()

    thread = threading.Thread(target=beat, daemon=True, name="bench-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a scheduler's preemption, `kill`) stops the suite as Ctrl-C does: cleanly, resumable."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _owner(cell_dir: Path) -> str:
    claim = read_claim(cell_dir) or {}
    return f"{claim.get('host', '?')} pid {claim.get('pid', '?')}, epoch {claim.get('epoch', '?')}/{claim.get('epochs', '?')}"


def execute(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress, index: int, total: int,
            options: RunOptions, claim: Claim | None = None) -> dict[str, Any]:
    """Run one cell here and return its record, written to result.json whatever happened: ok, or a failure
    saying what it was (diverged, oom, failed) so a suite goes on past it."""
    trial = options.trials.get(cell.id)
    try:
        return run_cell(cell, suite_dir, device, progress, index, total, options=options, claim=claim)
    except KeyboardInterrupt:
        raise
    except Diverged as e:  # a result: the history so far is kept, and the report lists it
        _write_history(suite_dir / cell.id, e.history)
        return failure_record(cell, suite_dir, device, "diverged", str(e), trial=trial, epoch=e.epoch,
                              history=e.history)
    except Pruned as e:  # final as well: a rerun never trains it on (its study was told it was pruned)
        _write_history(suite_dir / cell.id, e.history)
        return failure_record(cell, suite_dir, device, "pruned", str(e), trial=trial, epoch=e.epoch,
                              history=e.history, cost=e.cost)
    except torch.OutOfMemoryError as e:
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        error = (f"out of memory at train.batch_size {cell.config.train.batch_size}"
                 + (f" (peak {peak:.0f} MiB allocated)" if peak is not None else "")
                 + "; lower train.batch_size (train.accumulate keeps the effective batch), or use bf16")
        return failure_record(cell, suite_dir, device, "oom", error, trial=trial, peak_cuda_mb=peak,
                              detail=str(e)[:500])
    except Exception as e:  # one cell's failure is a record, and the suite goes on
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return failure_record(cell, suite_dir, device, "failed", f"{type(e).__name__}: {line}", trial=trial,
                              traceback=traceback.format_exc())


def failure_record(cell: Cell, suite_dir: Path, device: torch.device, status: str, error: str, *,
                   trial: TrialSpec | None = None, **extra: Any) -> dict[str, Any]:
    """Write and return the record of a cell that did not finish."""
    cell_dir = suite_dir / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_json(cell_dir / "cell.json", cell_record(cell, trial))
    record = {"schema_version": bench.SCHEMA_VERSION, "status": status, "error": error, **extra,
              "env": environment(device)}
    write_json(cell_dir / "result.json", record)
    return record


def _write_history(cell_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    pd.DataFrame(history).to_csv(buf, index=False)
    atomic_write_text(cell_dir / "history.csv", buf.getvalue())


def cell_record(cell: Cell, trial: TrialSpec | None = None) -> dict[str, Any]:
    record = {"id": cell.id, "group": cell.group, "label": cell.label, "axes": cell.axes, "parent": cell.parent,
              "config": cell.config.model_dump(mode="json")}
    if trial is not None:  # which contender's study this cell is a trial of (bench.tune)
        record["tune"] = {"contender": trial.contender, "trial": trial.number, "params": trial.params}
    return record


@dataclass
class Network:
    """A cell's data, loaders and network as training starts: the initial (or parent's) weights, frozen as
    the config says, on the device; with freeze = "features", the head on cached-feature loaders."""
    data: Any
    loaders: dict[str, Any]
    model: torch.nn.Module
    init_key: str
    parent: dict[str, Any] | None
    params: tuple[int, int]  # total, trainable
    gflops: float | None
    features: dict[str, Any] | None


def build_network(cell: Cell, suite_dir: Path, device: torch.device) -> Network:
    cfg = cell.config
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)  # timm's augmentation policies draw from Python's generator

    online = None if cfg.train.offline else build_augment(cfg.train.augment, cfg.data.image_size)
    data = prepare(cfg.data, cfg.seed, suite_dir / "splits", online)
    loaders = make_loaders(data.datasets, cfg.train, cfg.seed, cfg.data.image_size, cfg.data.workers)
    model, init_key = initial_model(cfg, data.num_classes, suite_dir / "init")
    parent = None
    if cell.parent:  # a staged cell (model.init_from) starts from its parent's best weights
        if not is_done(suite_dir / cell.parent):
            raise UserError(f"parent cell {cell.parent} did not finish", key="model.init_from",
                            hint="see its result.json; the child runs once the parent has")
        parent = {"id": cell.parent, "sha256": load_parent(model, suite_dir / cell.parent)}
    apply_freeze(model, cfg.model.freeze, cfg.data.image_size)
    params = count_params(model)
    gflops = forward_gflops(model, cfg.data.image_size)  # of the whole network, outside the timed region
    model.to(device)
    features = None
    if cfg.model.freeze == "features":  # the head alone trains, on the backbone's cached features
        model, loaders, features = feature_setup(model, cfg, data, loaders, device)
    return Network(data, loaders, model, init_key, parent, params, gflops, features)


def run_cell(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress,
             index: int = 1, total: int = 1, *, options: RunOptions | None = None,
             claim: Claim | None = None) -> dict[str, Any]:
    """Train and evaluate one cell in this process, going on from its checkpoint; write its records."""
    options = options or RunOptions()
    cfg = cell.config
    trial = options.trials.get(cell.id)
    cell_dir = suite_dir / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_json(cell_dir / "cell.json", cell_record(cell, trial))
    (cell_dir / "result.json").unlink(missing_ok=True)  # a rerun is not done until it writes a new one
    if options.threads:  # the executor's share of the cores (floating-point sums depend on it: recorded)
        torch.set_num_threads(options.threads)
    net = build_network(cell, suite_dir, device)
    data, loaders, model, init_key, parent = net.data, net.loaders, net.model, net.init_key, net.parent
    (params_total, params_trainable), gflops, features = net.params, net.gflops, net.features

    init_sha = sealed_digest(suite_dir / "init" / f"{init_key}.safetensors")  # verified by initial_model
    checkpoint = None
    if options.checkpoint:
        # valid for this config (the id), these images in these splits, these initial weights, this schema
        fingerprint = stable_hash({"cell": cell.id, "split": data.split_key, "init": init_sha,
                                   "parent": parent, "schema": bench.SCHEMA_VERSION}, 16)
        checkpoint = Checkpoint(cell_dir, fingerprint, cfg.train.epochs)
        if options.force:
            checkpoint.remove()

    report = None
    if trial is not None and trial.pruner != "none":  # the study hears every epoch, and may stop it
        start = time.perf_counter()
        from bench.tune import EpochReporter  # Optuna, imported only by a trial's process: tuning's cost

        imported = time.perf_counter() - start
        report = EpochReporter(trial, cfg.train)
        report.seconds += imported

    def on_epoch(row: dict[str, Any]) -> None:
        progress.epoch(row)
        if claim is not None:
            claim.update(epoch=row["epoch"])
        if report is not None:
            report(row)

    steps = steps_per_epoch(loaders["train"], cfg.train.max_steps)
    progress.start_cell(index, total, cell.label, cell.id, cfg.train.epochs, steps)
    torch.manual_seed(cfg.seed)  # training randomness (shuffling, augmentation) starts from the seed alone
    exact_rss = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        result = fit(model, loaders, cfg.train, device, on_epoch=on_epoch, on_step=progress.step,
                     class_counts=data.info["train_class_counts"], checkpoint=checkpoint, test=trial is None)
    except Pruned as e:
        if checkpoint is not None and not options.keep_checkpoint:
            checkpoint.remove()
        # what reporting to the study cost is tuning's time, not training's
        e.cost = {"train_time_s": sum(r.get("train_seconds", 0.0) for r in e.history), "pruner_s": report.seconds}
        raise
    wall = time.perf_counter() - start

    _write_history(cell_dir, result.history)
    arrays = {}
    for split, (logits, labels) in result.predictions.items():
        arrays[f"{split}_logits"] = logits.numpy().astype(np.float32)
        arrays[f"{split}_labels"] = labels.numpy().astype(np.int64)
    if "test" in result.predictions:  # rows = true class, columns = predicted (bench.metrics.confusion_matrix)
        arrays["test_confusion"] = confusion_matrix(*result.predictions["test"]).numpy().astype(np.int64)
    write_npz(cell_dir / "predictions.npz", **arrays)
    model.load_state_dict(result.best_state)
    with atomic_path(cell_dir / "best.safetensors") as tmp:
        save_model(model.cpu(), str(tmp))

    record = {
        "schema_version": bench.SCHEMA_VERSION,
        "status": "ok",
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "metrics": result.metrics,
        "train": result.info,
        "cost": {
            **result.timing,
            "wall_time_s": wall,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_scope": "cell" if exact_rss else "process",
            "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "params_total": params_total,
            "params_trainable": params_trainable,
            "gflops_forward": gflops,
            **({"pruner_s": report.seconds} if report is not None else {}),
        },
        "data": {**data.info, "split_key": data.split_key, "class_names": data.classes},
        "init": {"key": init_key, "sha256": init_sha},
        **({"parent": parent} if parent else {}), **({"features": features} if features else {}),
        "env": environment(device),
    }
    write_json(cell_dir / "result.json", record)  # last: its presence with status ok marks the cell done
    if checkpoint is not None and not options.keep_checkpoint:
        checkpoint.remove()
    return record


def evaluate_test(cell: Cell, suite_dir: Path, device: torch.device) -> dict[str, dict[str, float]]:
    """The test split, once, for a finished cell that trained without looking at it (the chosen trial of a
    tuning study): its best weights' test metrics (and TTA's), added to its result.json, and the test
    logits, labels and confusion matrix to its predictions.npz, as a cell trained with test has them."""
    cell_dir = suite_dir / cell.id
    record = read_json(cell_dir / "result.json")
    if record.get("status") != "ok":
        raise UserError(f"cell {cell.id} has not finished (status {record.get('status')})", file=cell_dir)
    tested = {k: v for k, v in record["metrics"].items() if k.startswith("test")}
    if tested:  # test is looked at once
        return tested
    claim = Claim(cell_dir, cell.config.train.epochs)
    if not claim.acquire():
        raise UserError(f"cell {cell.id} is held by another run ({_owner(cell_dir)})", file=cell_dir,
                        hint="run again once it has finished")
    try:
        cfg = cell.config
        net = build_network(cell, suite_dir, device)
        if len(net.loaders["test"].dataset) == 0:
            return {}
        load_model(net.model, str(cell_dir / "best.safetensors"), device=str(device))
        if cfg.train.channels_last:
            net.model.to(memory_format=torch.channels_last)
        autocast, _ = precision_setup(cfg.train.precision, device)
        prep = Preprocess(device, cfg.train.channels_last)
        start = time.perf_counter()
        logits, labels, _ = predict(net.model, net.loaders["test"], prep, autocast=autocast)
        metrics = {"test": full_metrics(logits, labels)}
        arrays = {"test_logits": logits.numpy().astype(np.float32), "test_labels": labels.numpy().astype(np.int64),
                  "test_confusion": confusion_matrix(logits, labels).numpy().astype(np.int64)}
        views = build_tta(cfg.train.tta)
        if views:
            logits, labels, _ = predict(net.model, net.loaders["test"], prep, autocast=autocast, views=views)
            metrics["test_tta"] = full_metrics(logits, labels)
            arrays.update(test_tta_logits=logits.numpy().astype(np.float32),
                          test_tta_labels=labels.numpy().astype(np.int64))
        seconds = time.perf_counter() - start
        with np.load(cell_dir / "predictions.npz") as saved:
            write_npz(cell_dir / "predictions.npz", **{k: saved[k] for k in saved.files}, **arrays)
        record["metrics"].update(metrics)
        record["test_evaluated"] = {"at": time.time(), "seconds": seconds, "env": environment(device)}
        write_json(cell_dir / "result.json", record)
        return metrics
    finally:
        claim.release()


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0), so the peak is per cell."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    import timm
    import torchvision

    return {
        "bench": bench.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "host": platform.node(),
        "executor": os.environ.get(EXECUTOR_ENV, "local"),
    }


EXECUTOR_ENV = "BENCH_EXECUTOR"  # set for a cell's process by the executor that runs it

