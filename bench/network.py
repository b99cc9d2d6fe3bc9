"""A cell's data, loaders and network as training starts: seeded, split, the shared initial (or a parent's
best) weights, frozen as the config says, on the device; with freeze = "features", the head alone on
cached-feature loaders. Training and the later test of a tuned trial's weights both start here."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cell import Cell
from bench.config import TrainConfig
from bench.cost import forward_gflops
from bench.data import prepare
from bench.data.loaders import make_loader
from bench.errors import UserError
from bench.features import feature_setup
from bench.models.freeze import apply_freeze, count_params
from bench.store import INIT, SPLITS, is_done, load_best
from bench.techniques import SAMPLERS, build_augment
from bench.techniques.offline import OfflineAugmented, copies
from bench.weights import initial_model


@dataclass
class Network:
    data: Any
    loaders: dict[str, Any]
    model: torch.nn.Module
    init_key: str
    parent: dict[str, Any] | None
    params: tuple[int, int]  # total, trainable
    gflops: float | None
    features: dict[str, Any] | None
    workers: int = 0  # the loaders' worker processes, data.workers resolved


def loader_workers(workers: int | str, device: torch.device, cpus: int | None = None) -> int:
    """data.workers as a count: `auto` on a GPU is the cell's CPUs per rank (`cpus`, the executor's share;
    else every core) less the one that trains, at most 8; on the CPU 0, whose cores train."""
    if workers != "auto":
        return int(workers)
    if device.type == "cpu":
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def build_network(cell: Cell, suite_dir: Path, device: torch.device, cpus: int | None = None,
                  listings: str | None = None) -> Network:
    """`cpus`: the cell's share of the CPUs per rank, which `data.workers = "auto"` follows; `listings`: the
    run's listing of the data (bench.data.listing), else the cell lists it."""
    cfg = cell.config
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)  # timm's augmentation policies draw from Python's generator

    online = None if cfg.train.offline else build_augment(cfg.train.augment, cfg.data.image_size)
    data = prepare(cfg.data, cfg.seed, suite_dir / SPLITS, online, listings)
    workers = loader_workers(cfg.data.workers, device, cpus)
    loaders = make_loaders(data.datasets, cfg.train, cfg.seed, cfg.data.image_size, workers, pin=device.type == "cuda")
    model, init_key = initial_model(cfg, data.num_classes, suite_dir / INIT)
    parent = None
    if cell.parent:  # a staged cell (model.init_from) starts from its parent's best weights
        if not is_done(suite_dir / cell.parent):
            raise UserError(f"parent cell {cell.parent} did not finish", key="model.init_from",
                            hint="see its result.json; the child runs once the parent has")
        parent = {"id": cell.parent, "sha256": load_best(model, suite_dir / cell.parent, key="model.init_from",
                                                           what="parent cell")}
    apply_freeze(model, cfg.model.freeze, cfg.data.image_size)
    params = count_params(model)
    gflops = forward_gflops(model, cfg.data.image_size)  # of the whole network, outside the timed region
    model.to(device)
    features = None
    if cfg.model.freeze == "features":  # the head alone trains, on the backbone's cached features
        model, loaders, features = feature_setup(model, cfg, data, loaders, device)
    return Network(data, loaders, model, init_key, parent, params, gflops, features, workers)


def make_loaders(datasets: dict, cfg: TrainConfig, seed: int, image_size: int, workers: int = 0,
                 pin: bool = False) -> dict:
    """Loaders for every split: the training set enlarged offline (train.offline) and drawn by
    train.sampler; evaluation in order. Online augmentation is already in the training dataset."""
    loaders = {}
    for split, ds in datasets.items():
        if split == "train":
            if cfg.offline:
                ds = OfflineAugmented(ds, copies(cfg.offline, cfg.offline_random),
                                      build_augment(cfg.augment, image_size), seed)
            elif cfg.aug_splits > 1:
                ds.splits = cfg.aug_splits
            elif cfg.augment_on == "device":
                ds.on_device()
            sampler = SAMPLERS[cfg.sampler](ds.labels, seed)
            loaders[split] = make_loader(ds, cfg.batch_size, train=True, seed=seed, workers=workers, sampler=sampler,
                                         pin=pin)
        else:
            loaders[split] = make_loader(ds, cfg.eval_batch_size, train=False, seed=seed, workers=workers, pin=pin)
    return loaders
