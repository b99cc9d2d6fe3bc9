"""Helpers several test modules share (test modules never import from each other): a suite run from this
process, scripted training figures, tiny loaders, hand-written cell records, and `bench` processes to kill
and wait for."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import bench.train as train
from bench import SCHEMA_VERSION, api
from bench.progress import LogProgress
from bench.store import write_json, write_npz


def run_file(path: Path, results: Path, *, options=None, executor=None, log=None):
    """`bench run PATH --device cpu` from this process, through the library's entry point as the CLI calls it
    (preflight left out): `options` a RunOptions (isolate=False keeps the cells in this process, where a test
    can spy on them), `log` the progress stream (default: stderr)."""
    return api.run(api.plan(path, check=False), results=results, device="cpu", options=options,
                   executor=executor, progress=LogProgress(log))


def photo(rng, h: int, w: int) -> np.ndarray:
    """Gradients and noise, so that every op (crops, flips, colour, blur, equalise) changes some pixels."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.int16)
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


# a suite over an image folder, `root`: one epoch of bench:mlp at 16 px ([[cells]] may follow)
FOLDER_SUITE = """
[suite]
name = "files"
seeds = [0]

[data]
source = "folder"
root = "{root}"
image_size = 16

[train]
epochs = 1
batch_size = 8
optimizer = "adam"
lr = 0.003

[model]
arch = "bench:mlp"
"""


# ---------------------------------------------------------------- training, scripted
CPU = torch.device("cpu")


def tiny_loaders(n: int = 48, size: int = 16, classes: int = 3, seed: int = 0) -> dict[str, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    ds = TensorDataset(x, y)
    return {"train": DataLoader(ds, batch_size=16, shuffle=True, generator=g),
            "val": DataLoader(ds, batch_size=32), "test": DataLoader(ds, batch_size=32)}


def scripted_val_errors(monkeypatch, errors: list[float], loss: float | list[float] | None = 1.0):
    """Validation errors in the order the epochs see them (and `loss` as their validation loss, unless None:
    one for every epoch, or a list in the order of `errors`); later calls (the final evaluation) are real.
    Returns restart(errors): a new script from the next call on, as a tuning trial's training starts its own."""
    real, state = train.score, {"errors": list(errors), "i": 0}

    def fake(*args, **kwargs):
        out, images, seconds = real(*args, **kwargs)
        if state["i"] < len(state["errors"]):
            epoch_loss = loss[state["i"]] if isinstance(loss, list) else loss
            out = {**out, "top1_error": state["errors"][state["i"]],
                   **({"loss": epoch_loss} if epoch_loss is not None else {})}
        state["i"] += 1
        return out, images, seconds

    monkeypatch.setattr(train, "score", fake)
    return lambda errors: state.update(errors=list(errors), i=0)


# ---------------------------------------------------------------- records written by hand (no training)
ENV_A = {"device_name": "AMD EPYC", "torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31"}


def make_cell(suite_dir, cell_id, *, arch="bench:mlp", freeze="none", seed=0, val_error=0.5, test_error=0.5,
              train_time_s=10.0, env=None, metrics=None, cost=None, status="ok", predictions=None,
              split_key="k0", group=None, history=None, label=None, axes=None, dataset=None, tune=None):
    """Write one cell folder by hand: cell.json, result.json and optionally predictions.npz/history.csv.
    `axes` ({dotted key: value}) adds varying keys to the config and the axes; `dataset` a [[datasets]]
    name (the dataset axis, last in the label); `tune` a trial's cell.json "tune" entry."""

    suite_dir.mkdir(parents=True, exist_ok=True)
    (suite_dir / "suite.toml").write_text('[suite]\nname = "x"\n')
    d = suite_dir / cell_id
    config = {"seed": seed, "model": {"arch": arch, "freeze": freeze, "pretrained": False},
              "data": {"image_size": 32, "min_per_class": 0}, "train": {"lr": 0.01}}
    for key, value in (axes or {}).items():
        section, name = key.split(".")
        config[section][name] = value
    label = label or f"arch={arch} freeze={freeze}" + (f" dataset={dataset}" if dataset else "")
    cell = {"id": cell_id, "group": group or f"{arch}|{freeze}|{dataset}", "config": config, "label": label,
            "axes": {"model.arch": arch, "model.freeze": freeze, **(axes or {}),
                     **({"dataset": dataset} if dataset else {})}}
    write_json(d / "cell.json", {**cell, **({"tune": tune} if tune else {})})
    data = {"split_key": split_key, "class_names": ["a", "b", "c"], "train_class_counts": [30, 20, 10]}
    result = {"schema_version": SCHEMA_VERSION, "status": status, "env": env or ENV_A, "data": data}
    if status == "ok":
        result["metrics"] = metrics or {"val": {"top1_error": val_error}, "test": {"top1_error": test_error}}
        result["cost"] = {"train_time_s": train_time_s, "params_total": 1000, "train_images_per_s": 100.0,
                          **(cost or {})}
    else:
        result["error"] = "RuntimeError: boom"
    write_json(d / "result.json", result)
    if predictions is not None:
        logits, labels = predictions
        write_npz(d / "predictions.npz", test_logits=np.asarray(logits, np.float32),
                  test_labels=np.asarray(labels, np.int64), val_logits=np.asarray(logits, np.float32),
                  val_labels=np.asarray(labels, np.int64))
    if history is not None:
        pd.DataFrame(history).to_csv(d / "history.csv", index=False)
    return d


def answers(right, classes=4):
    """Logits and labels of len(right) test images: right[i] says whether the cell gets image i right."""
    labels = np.arange(len(right)) % classes
    predicted = np.where(right, labels, (labels + 1) % classes)
    return np.eye(classes)[predicted] * 3, labels


def trial_record(s, contender, n, lr, state, value, *, test=None, arch="a", time_s=10.0, predictions=None):
    cell_id = f"{contender}-t{n}"
    metrics = {"val": {"top1_error": value}, **({"test": {"top1_error": test}} if test is not None else {})}
    make_cell(s, cell_id, arch=arch, axes={"train.lr": lr}, metrics=metrics, label=f"arch={arch} lr={lr}",
              tune={"contender": contender, "trial": n, "params": {"train.lr": lr}}, predictions=predictions,
              status="ok" if state != "failed" else "failed")
    return {"number": n, "cell": cell_id, "params": {"train.lr": lr}, "state": state, "value": value,
            "train_time_s": time_s}


def study_record(s, contender, label, trials, chosen, test=None, arch="a"):
    write_json(s / "tune" / f"{contender}.json", {
        "contender": contender, "label": label, "axes": {"model.arch": arch},
        "space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}}, "budget": 3, "sampler": "tpe",
        "pruner": "median", "metric": "val_error", "trials": trials, "chosen": chosen,
        "cost": {"trials": sum(t["state"] != "running" for t in trials),
                 "pruned": sum(t["state"] == "pruned" for t in trials),
                 "failed": sum(t["state"] == "failed" for t in trials),
                 "train_time_s": sum(t["train_time_s"] for t in trials), "tuning_overhead_s": 2.5},
        "test": test})


# ---------------------------------------------------------------- `bench` processes
def _as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test runner started in the background may ignore it


def bench(*args: str, env: dict, **kw) -> subprocess.Popen:
    """`python -m bench ARGS` in a process group of its own, so a test can kill it and all it started."""
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_as_from_a_terminal, **kw)


def outputs(suite_dir: Path) -> dict:
    """Everything a cell's numbers are: metrics, history without timings, predictions, best weights."""
    found = {}
    for cell in sorted(p for p in suite_dir.iterdir() if (p / "result.json").is_file()):
        result = json.loads((cell / "result.json").read_text())
        assert result["status"] == "ok", result.get("error")
        history = (cell / "history.csv").read_text().splitlines()
        header = history[0].split(",")
        keep = [i for i, h in enumerate(header) if not h.endswith("seconds")]
        found[cell.name] = {
            "metrics": result["metrics"], "best_epoch": result["best_epoch"],
            "history": [[row.split(",")[i] for i in keep] for row in history],
            "predictions": {k: v.tobytes() for k, v in np.load(cell / "predictions.npz").items()},
            "weights": {k: v.numpy().tobytes() for k, v in load_file(cell / "best.safetensors").items()},
        }
    return found


def no_process_left(session: int, within: float = 10.0) -> bool:
    """Whether every process of the session ends within `within` seconds (the fork server and resource
    tracker end when they see their parent's pipes close)."""
    deadline = time.monotonic() + within
    while subprocess.run(["pgrep", "-s", str(session)], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for(predicate, proc, what: str = "", timeout=120.0):
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: " + proc.communicate()[0]
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)


def offline(monkeypatch, tmp_path) -> None:
    """No network, and an empty hub cache: hub weights can be neither found nor fetched."""
    from bench.models import factory

    def unreachable(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(factory.socket, "create_connection", unreachable)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))


def packed(folder: Path, images) -> Path:
    """H x W x 3 uint8 images written as the decoded cache lays them out (pixels back to back, an index of
    offset, height, width), for an ArrayDataset over them."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [im.shape[0] * im.shape[1] * 3 for im in images]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    np.save(folder / "index.npy", np.array([[o, im.shape[0], im.shape[1]] for o, im in zip(offsets, images, strict=True)],
                                           dtype=np.int64).reshape(-1, 3))
    np.save(folder / "pixels.npy", np.concatenate([np.asarray(im, dtype=np.uint8).reshape(-1) for im in images]))
    return folder

