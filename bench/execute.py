"""One cell, in the process it runs in: build its network, train it (going on from its checkpoint), evaluate,
write its files through bench.store; any failure becomes the cell's record (diverged, pruned, oom, failed)
so that the suite goes on. Also the one later look at test for a cell that trained without it (a tuned
contender's chosen trial). Who runs a cell, and where, is decided above: bench.attempt, bench.executors."""

from __future__ import annotations

import contextlib
import random
import secrets
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bench
from bench import distributed
from bench.artefacts import sealed_digest
from bench.cell import Cell, Diverged, Pruned, RunOptions, TrialSpec, cell_record, resolved_config
from bench.checkpoint import Checkpoint, saved_epoch
from bench.claims import Claim, holder
from bench.data.loaders import Preprocess
from bench.environment import AnonPeak, environment, peak_rss_mb, reset_peak_rss
from bench.errors import UserError, first_line
from bench.evaluate import evaluate, prediction_arrays
from bench.hashing import stable_hash
from bench.network import build_network
from bench.progress import LogProgress
from bench.ranks import clear_stale, ranks
from bench.store import (
    CELL,
    INIT,
    PREDICTIONS,
    add_predictions,
    drop_predictions,
    forget_result,
    full_disk_path,
    init_file,
    load_best,
    read_json,
    read_result,
    save_best,
    write_cell,
    write_history,
    write_npz,
    write_result,
)
from bench.techniques import build_tta
from bench.techniques.backends import backend_flags
from bench.techniques.precision import precision_setup
from bench.train import fit, steps_per_epoch


def execute(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress, index: int, total: int,
            options: RunOptions, claim: Claim | None = None) -> dict[str, Any]:
    """Run one cell here and return its record, written to result.json whatever happened: ok, or a failure
    saying what it was (diverged, oom, failed) so a suite goes on past it."""
    trial = options.trials.get(cell.id)
    try:
        # the whole cell, with its other ranks (bench.distributed): its feature extraction, training, evaluation
        with backend_flags(cell.config.train), ranks(options.ranks, device, train_as_helper,
                                                     (cell, suite_dir, options), suite_dir / cell.id) as device:
            return run_cell(cell, suite_dir, device, progress, index, total, options=options, claim=claim)
    except KeyboardInterrupt:
        raise
    except Diverged as e:  # a result: the history so far is kept, and the report lists it
        write_history(suite_dir / cell.id, e.history)
        return failure_record(cell, suite_dir, device, "diverged", str(e), trial=trial, epoch=e.epoch,
                              history=e.history)
    except Pruned as e:  # final as well: a rerun never trains it on (its study was told it was pruned)
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
        if full_disk_path(e):
            raise  # but a full disk takes no record: the run stops on one line naming the folder (store's)
        return failure_record(cell, suite_dir, device, "failed", first_line(e, typed=True), trial=trial,
                              traceback=traceback.format_exc())


def failure_record(cell: Cell, suite_dir: Path, device: torch.device, status: str, error: str, *,
                   trial: TrialSpec | None = None, **extra: Any) -> dict[str, Any]:
    """Write and return the record of a cell that did not finish."""
    cell_dir = suite_dir / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    attempt = _attempt_of(cell_dir)  # the attempt that failed (its process wrote cell.json as it started)
    write_cell(cell_dir, cell_record(cell, trial, attempt))
    record = {"schema_version": bench.SCHEMA_VERSION, "status": status, "error": error, **extra,
              "config": resolved_config(cell), "env": environment(device), "attempt": attempt}
    write_result(cell_dir, record)
    return record


def _attempt_of(cell_dir: Path) -> str | None:
    """The attempt cell.json names: which run of the cell its files are (a resumed one keeps its own)."""
    try:
        return read_json(cell_dir / CELL).get("attempt")
    except (OSError, ValueError, AttributeError):
        return None


def _pruning_reporter(trial: TrialSpec | None, train: Any):
    """A trial with a pruner reports every epoch to its study, which may stop it."""
    if trial is None or trial.pruner == "none":
        return None
    start = time.perf_counter()
    from bench.tune.pruning import EpochReporter  # Optuna, imported only by a trial's process: tuning's cost

    imported = time.perf_counter() - start
    report = EpochReporter(trial, train)
    report.seconds += imported
    return report


def run_cell(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress,
             index: int = 1, total: int = 1, *, options: RunOptions | None = None,
             claim: Claim | None = None) -> dict[str, Any]:
    """Train and evaluate one cell in this process, going on from its checkpoint; write its records."""
    options = options or RunOptions()
    cfg = cell.config
    trial = options.trials.get(cell.id)
    cell_dir = suite_dir / cell.id
    main = distributed.is_main()  # the other ranks of a cell train with it and write nothing
    distributed.tell(True)
    distributed.require_splittable(cfg.train.batch_size, cfg.model.freeze, distributed.world())  # preflight's too
    attempt = None
    if main:
        cell_dir.mkdir(parents=True, exist_ok=True)
        # an attempt goes on from its checkpoint, or starts anew (its trackers' runs with it: bench.trackers)
        resumes = options.checkpoint and not options.force and saved_epoch(cell_dir) is not None
        attempt = (resumes and _attempt_of(cell_dir)) or secrets.token_hex(6)
        forget_result(cell_dir, history=not resumes)  # before cell.json names the new attempt
        clear_stale(cell_dir)
        write_cell(cell_dir, cell_record(cell, trial, attempt))
    if options.threads:  # the executor's share of the cores (floating-point sums depend on it: recorded)
        torch.set_num_threads(options.threads)
    net = build_network(cell, suite_dir, device, options.cpus, options.listings)
    data, loaders, model = net.data, net.loaders, net.model

    init_sha = sealed_digest(init_file(suite_dir / INIT, net.init_key))  # verified by initial_model
    checkpoint = None
    if options.checkpoint:
        # valid for this config (the id), these images in these splits, these initial weights, this schema
        fingerprint = stable_hash({"cell": cell.id, "split": data.split_key, "init": init_sha,
                                   "parent": net.parent, "schema": bench.SCHEMA_VERSION}, 16)
        checkpoint = Checkpoint(cell_dir, fingerprint, cfg.train.epochs)
        if options.force and main:
            checkpoint.remove()
    distributed.barrier()  # no rank reads a checkpoint rank 0 is about to remove
    if not main:
        _fit_as_helper(cell, net, device, checkpoint, trial)
        return {}
    report = _pruning_reporter(trial, cfg.train)

    def on_epoch(history: list[dict[str, Any]]) -> None:
        row = history[-1]
        write_history(cell_dir, history)  # each epoch: the trackers follow a running cell (bench.trackers)
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
        torch.cuda.empty_cache()  # the reserve then counts from the cell's own blocks, not a feature extraction's
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with AnonPeak() as anon:
            result = fit(model, loaders, cfg.train, device, on_epoch=on_epoch, on_step=progress.step,
                         class_counts=data.info["train_class_counts"], checkpoint=checkpoint, test=trial is None)
    except Pruned as e:
        if checkpoint is not None and not options.keep_checkpoint:
            checkpoint.remove()
        # what reporting to the study cost is tuning's time, not training's
        e.cost = {"train_time_s": sum(r.get("train_seconds", 0.0) for r in e.history), "pruner_s": report.seconds}
        raise
    wall = time.perf_counter() - start

    write_history(cell_dir, result.history)
    write_npz(cell_dir / PREDICTIONS, **prediction_arrays(result.predictions, cfg.train.stored_logits))
    save_best(model, cell_dir)  # fit leaves the model holding its best weights
    (params_total, params_trainable) = net.params
    record = {
        "schema_version": bench.SCHEMA_VERSION,
        "status": "ok",
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "metrics": result.metrics,
        # what it trained with (loss, schedule, augmentation, model kwargs...): the record alone says it all
        "config": resolved_config(cell),
        # how batches came: data.workers resolved, pinned for an asynchronous copy to a GPU
        "train": {**result.info, "loader_workers": net.workers, "pin_memory": loaders["train"].pin_memory},
        "cost": {
            **result.timing,
            "wall_time_s": wall,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_scope": "cell" if exact_rss else "process",
            "peak_rss_anon_mb": anon.mb,  # without the page cache of mapped files (the decoded images)
            "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            # what the caching allocator held at most: what the GPU must have free for the cell
            "peak_cuda_reserved_mb": (torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda"
                                      else None),
            "params_total": params_total,
            "params_trainable": params_trainable,
            "gflops_forward": net.gflops,
            **({"pruner_s": report.seconds} if report is not None else {}),
        },
        "data": {**data.info, "split_key": data.split_key, "class_names": data.classes},
        "init": {"key": net.init_key, "sha256": init_sha},
        **({"parent": net.parent} if net.parent else {}), **({"features": net.features} if net.features else {}),
        "env": environment(device),
        "attempt": attempt,
    }
    write_result(cell_dir, record)
    if checkpoint is not None and not options.keep_checkpoint:
        checkpoint.remove()
    return record


def _fit_as_helper(cell: Cell, net: Any, device: torch.device, checkpoint: Checkpoint | None,
                     trial: TrialSpec | None) -> None:
    """A rank other than 0: the same fit, its own draws for dropout and mixing (seed + rank, as timm's
    distributed training seeds them), no files written; rank 0 records what happened."""
    seed = cell.config.seed + distributed.rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    with contextlib.suppress(Diverged, Pruned, distributed.Stopped):  # rank 0 decided so, and records it
        fit(net.model, net.loaders, cell.config.train, device, class_counts=net.data.info["train_class_counts"],
            checkpoint=checkpoint, test=trial is None)


def train_as_helper(device: torch.device, cell: Cell, suite_dir: Path, options: RunOptions) -> None:
    """A rank other than 0 of a cell (bench.ranks starts it): run_cell as rank 0 runs it."""
    with backend_flags(cell.config.train):
        run_cell(cell, suite_dir, device, LogProgress(), options=options)


def withdraw_test(cell_dir: Path, record: dict[str, Any]) -> None:
    """evaluate_test undone: the test figures out of the cell's predictions.npz, then out of its result.json
    (in that order: a kill between the two leaves the record saying what is still to withdraw)."""
    drop_predictions(cell_dir, "test")
    record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.startswith("test")}
    record.pop("test_evaluated", None)
    write_result(cell_dir, record)


def evaluate_test(cell: Cell, suite_dir: Path, device: torch.device,
                  listings: str | None = None) -> dict[str, dict[str, float]]:
    """The test split, once, for a finished cell that trained without looking at it (the chosen trial of a
    tuning study): its best weights' test metrics (and TTA's), added to its result.json, and the test
    logits, labels and confusion matrix to its predictions.npz, as a cell trained with test has them."""
    cell_dir = suite_dir / cell.id
    record = read_result(cell_dir) or {}
    if record.get("status") != "ok":
        raise UserError(f"cell {cell.id} has not finished (status {record.get('status')})", file=cell_dir)
    tested = {k: v for k, v in record["metrics"].items() if k.startswith("test")}
    if tested:  # test is looked at once
        return tested
    claim = Claim(cell_dir, cell.config.train.epochs)
    if not claim.acquire():
        raise UserError(f"cell {cell.id} is held by another run ({holder(cell_dir)})", file=cell_dir,
                        hint="run again once it has finished")
    try:
        with backend_flags(cell.config.train):
            return _test_look(cell, record, suite_dir, device, listings)
    finally:
        claim.release()


def _test_look(cell: Cell, record: dict[str, Any], suite_dir: Path, device: torch.device,
               listings: str | None) -> dict[str, dict[str, float]]:
    cell_dir, cfg = suite_dir / cell.id, cell.config
    net = build_network(cell, suite_dir, device, listings=listings)
    if len(net.loaders["test"].dataset) == 0:
        return {}
    load_best(net.model, cell_dir)
    if cfg.train.channels_last:
        net.model.to(memory_format=torch.channels_last)
    autocast, _ = precision_setup(cfg.train.precision, device)
    start = time.perf_counter()
    tested = evaluate(net.model, net.loaders["test"], Preprocess(device, cfg.train.channels_last), "test",
                      autocast=autocast, views=build_tta(cfg.train.tta))
    seconds = time.perf_counter() - start
    add_predictions(cell_dir, prediction_arrays(tested.predictions, cfg.train.stored_logits))
    record["metrics"].update(tested.metrics)
    record["test_evaluated"] = {"at": time.time(), "seconds": seconds, "env": environment(device)}
    write_result(cell_dir, record)
    return tested.metrics
