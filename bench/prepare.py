"""Before a run's cells take their devices: every split, decoded-image cache and set of initial weights they
need, built once each (`bench prepare`, and what the parallel executors do first, as one CPU-only task on Ray
or Slurm), and each cell's estimated training cost, by which the executors start the longest cells first.

A cell that cannot be prepared (its data folder is missing, its weights file corrupt) is left to fail on its
own when it runs, with its own record: preparing never fails a suite."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.cell import Cell, depths
from bench.cost import TRAIN_FLOPS_PER_FORWARD, forward_gflops
from bench.data import prepare as prepare_data
from bench.errors import first_line
from bench.store import INIT, SPLITS
from bench.weights import initial_model


@dataclass
class Prepared:
    """What preparing a run's cells left: their estimated costs, what could not be prepared, and where."""
    costs: dict[str, float] = field(default_factory=dict)  # cell id -> training GFLOPs, estimated
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> why (the cell will say it again)
    seconds: float = 0.0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def note(self) -> dict[str, object]:
        """What run.json says of it."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def prepare_cells(cells: list[Cell], suite_dir: Path, say: Callable[[str], None] = lambda _: None,
                  listings: str | None = None) -> Prepared:
    """Build what `cells` share and estimate each one's cost: TRAIN_FLOPS_PER_FORWARD x its network's forward
    GFLOPs x its training images x its epochs (bench's own FLOP counter, at its image size); the data as the
    run listed it (`listings`: bench.data.listing)."""
    start, out = time.perf_counter(), Prepared()
    data: dict[tuple[str, int], object] = {}
    gflops: dict[tuple[str, int], float] = {}  # (initial weights, image size): a timm net's key has no size
    for cell in cells:
        cfg = cell.config
        try:
            key = (cfg.data.model_dump_json(), cfg.seed)
            if key not in data:  # a split and a decoded cache per data config and seed
                data[key] = prepare_data(cfg.data, cfg.seed, suite_dir / SPLITS, listings=listings)
            prepared = data[key]
            model, init = initial_model(cfg, prepared.num_classes, suite_dir / INIT)
            size = (init, cfg.data.image_size)
            if size not in gflops:
                gflops[size] = forward_gflops(model, cfg.data.image_size)
            images = len(prepared.datasets["train"])
            out.costs[cell.id] = TRAIN_FLOPS_PER_FORWARD * gflops[size] * images * cfg.train.epochs
        except Exception as e:  # noqa: BLE001 - the cell's own run records it, with its traceback
            out.failed[cell.id] = first_line(e)
            say(f"[bench] {cell.label}: not prepared ({first_line(e)[:200]}); it will say why when it runs")
    out.seconds = time.perf_counter() - start
    return out


def longest_first(cells: list[Cell], costs: dict[str, float]) -> list[Cell]:
    """The order in which to start cells: parents before their children (by depth of the parent chain), and
    within a depth the most expensive first, so that the longest cell is not the last to start. A cell not
    estimated goes first: it fails fast, or it is dear."""
    depth = depths(cells)
    return sorted(cells, key=lambda c: (depth[c.id], -costs.get(c.id, float("inf"))))


def flops_text(gflops: float) -> str:
    """A FLOP count for people: 661 GFLOPs, 67.2 PFLOPs."""
    for prefix, scale in (("E", 1e9), ("P", 1e6), ("T", 1e3)):
        if gflops >= scale:
            return f"{gflops / scale:,.1f} {prefix}FLOPs"
    return f"{gflops:,.3g} GFLOPs"
