"""Checks made before anything is written: those that need the file system, the network or the hardware."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.cell import Cell
from bench.config import DataConfig, Suite
from bench.config.data import VIEW_KEYS
from bench.errors import UserError
from bench.store import INIT, init_file, read_result
from bench.suite.expansion import where_set


def preflight(suite: Suite, cells: list[Cell], device: str = "auto", *, data: bool = True,
              results: Path | None = None, force: bool = False, listed: dict[str, Any] | None = None) -> list[str]:
    """Checks that need the file system, the network or the hardware, made before anything is written, so
    that a mistake is one line and exit 2 rather than a failed cell: the device; with `data`, each data
    config's files as its source reads them and what curation leaves of them (image headers only, cached);
    local weights files and their fit; freeze modes against the network's depth; hub weights (not asked for
    a cell whose initial weights `results`/<suite>/init already holds); the precision on this device; and,
    unless `force`, that the files under the cells `results` holds finished are still the files they were
    trained on; and what a cell of several ranks ([resources]) cannot be. Returns notes for the console: a
    split carved from the source's train part, once per data. Each source is listed and its files stat'ed
    once, into `listed` (bench.data.listing.source_key -> Samples), which the run then hands its cells."""
    from bench.device import resolve_device
    from bench.distributed import require_splittable
    from bench.techniques.precision import precision_setup

    dev = resolve_device(device)  # the same check, and message, as the runner's
    classes: dict[str, int] = {}  # data config -> classes curation keeps (for init keys and model shapes)
    previews: dict[str, tuple[Any, np.ndarray, Any]] = {}  # data config -> (its probed images, what curation keeps, their headers)
    files: dict[str, str] = {}  # data config -> its source's files, as bench.data.cache.files_key names them
    changed: list[Cell] = []
    done: set[str] = set()
    notes: list[str] = []
    listed = {} if listed is None else listed

    def once(*what: Any) -> bool:
        """True the first time: a 1,000-cell grid reads each weights file and builds each network once."""
        memo = json.dumps(what, sort_keys=True, default=str)
        if memo in done:
            return False
        done.add(memo)
        return True

    for cell in cells:
        d, m, t = cell.config.data, cell.config.model, cell.config.train
        try:
            require_splittable(t.batch_size, m.freeze, suite.resources.ranks(dev.type))
            data_key = d.model_dump_json(exclude={*VIEW_KEYS, "workers"})
            if data and data_key not in classes:
                from bench.data import listing
                from bench.data.curate import preview, require_trainable

                source = None
                if d.source != "synthetic":
                    if (key := listing.source_key(d)) not in listed:
                        listed[key] = listing.listed(d)
                    source = listed[key]
                samples, keep, steps, files[data_key], heads = preview(d, source)
                require_trainable(samples, keep, steps, d)
                classes[data_key] = len(np.unique(samples.labels[keep]))
                previews[data_key] = samples, keep, heads
                notes.extend(_carved(d, samples.given))
            if data and d.cache == "decoded" and d.source != "synthetic" and once("room", data_key, d.stored_size):
                notes.extend(_room(d, *previews[data_key]))
            if data_key in files and results is not None and not force \
                    and _trained_on_other_files(Path(results) / suite.suite.name / cell.id, files[data_key]):
                changed.append(cell)
            n = classes.get(data_key, 2)
            head = m.head_options()
            if isinstance(m.pretrained, str) and once("weights", m.pretrained, m.arch, m.kwargs, head, d.image_size):
                _check_weights_file(Path(m.pretrained), m.arch, d.image_size, head, m.kwargs)
            if ":" in m.freeze and once("freeze", m.freeze, m.arch, m.kwargs, head, d.image_size):
                from bench.models.factory import skeleton
                from bench.models.freeze import frozen_layers

                frozen_layers(skeleton(m.arch, n, d.image_size, m.kwargs, **head), m.freeze, d.image_size)
            saved = _init_saved(cell, n, data_key in classes, results, suite, once)
            if m.pretrained is True and not saved and once("hub", m.arch):
                from bench.models.factory import require_hub_weights

                require_hub_weights(m.arch)
            # fp16 off CUDA, bf16 on a CPU without it; whether a GPU has bf16 is left to the cell: asking
            # would initialise CUDA in this process, which holds GPU memory for the whole run
            if dev.type != "cuda" and once("precision", t.precision):
                precision_setup(t.precision, dev)
        except UserError as e:
            raise UserError(e.reason, file=suite.path, key=where_set(suite, cell, e.key) if e.key else None,
                            hint=e.hint) from None
    if changed:
        first = changed[0]
        raise UserError(f"the images under {len(changed)} finished cell(s) changed since they ran (e.g. "
                        f"'{first.label}', {first.id}: files added, removed, resized or touched under "
                        f"{first.config.data.root}); their results and new ones would not share a split",
                        file=suite.path, key="data",
                        hint="restore the data, or rerun those cells on the new data with --force "
                             "(add --only to pick them)")
    return notes


def _room(d: DataConfig, samples: Any, keep: np.ndarray, heads: Any) -> list[str]:
    """A note on the decoded cache a data set will build (from the headers the preview read), or a UserError
    when its disk cannot hold it."""
    from rich.filesize import decimal as human_bytes

    from bench.data.cache import room_for

    room = room_for(samples.root, [p for p, k in zip(samples.paths, keep, strict=True) if k],
                    heads.width[keep], heads.height[keep], d.stored_size,
                    None if samples.stats is None else samples.stats[keep])
    if room is None:  # built already
        return []
    need, free, where = room
    if need > free:
        raise UserError(f"the decoded cache of {d.root} ({int(keep.sum()):,} whole images, shorter side "
                        f"{d.stored_size} px) needs {human_bytes(need)}, and {human_bytes(free)} are free under {where}", key="data.cache",
                        hint='set data.cache = "none" (each image decoded from its file per batch), a smaller '
                             "data.cache_size, or BENCH_CACHE to a disk with room")
    return [f"data {d.root}: its decoded cache will take {human_bytes(need)} ({int(keep.sum()):,} whole images, "
            f"shorter side {d.stored_size} px; {human_bytes(free)} free under {where})"]


def _carved(d: DataConfig, given: np.ndarray | None) -> list[str]:
    """A note for each split the source lacks and bench carves from its train part."""
    from bench.data.split import origins

    if not d.source_split:
        return []
    return [f"data {d.root}: {split} is {origin}" for split, origin in origins(given, d.split).items()
            if origin.startswith("carved")]


def _trained_on_other_files(cell_dir: Path, files: str) -> bool:
    """Whether the cell finished (result.json says ok) on files other than `files`; records older than the
    files digest say nothing, and are taken as they are."""
    result = read_result(cell_dir) or {}
    try:
        recorded = result["data"].get("files") if result.get("status") == "ok" else None
    except (KeyError, TypeError, AttributeError):
        return False
    return recorded is not None and recorded != files


def _init_saved(cell: Cell, num_classes: int, known: bool, results: Path | None, suite: Suite,
                once: Callable[..., bool]) -> bool:
    """Whether this cell's shared initial weights are saved already (then the runner never asks the hub);
    saved weights that no longer match their seal are refused here, before any cell starts."""
    if results is None or not known or not (Path(results) / suite.suite.name / INIT).is_dir():
        return False
    from bench.weights import check_initial, init_key

    path = init_file(Path(results) / suite.suite.name / INIT, init_key(cell.config, num_classes))
    if not path.is_file():
        return False
    if once("init", str(path)):
        check_initial(path)
    return True


def _check_weights_file(path: Path, arch: str, image_size: int, head: dict[str, Any],
                        model_kwargs: dict[str, Any]) -> None:
    """A local model.pretrained file reads as a state dict of tensors (never unpickling code: weights_only)
    and fits the architecture, checked on its skeleton, so a wrong file is refused before any cell starts."""
    import warnings

    import torch

    from bench.models.factory import skeleton
    from bench.weights import load_backbone, read_state_file

    hint = "give a .safetensors or .pt state dict (torch.save(model.state_dict(), path)), true, or false"
    try:
        state = read_state_file(path)
    except UserError:
        raise
    except Exception as e:  # safetensors and torch raise their own types for a damaged or foreign file
        raise UserError(f"cannot read weights file '{path}' ({type(e).__name__})", key="model.pretrained",
                        hint=hint) from None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' holds no tensors by name", key="model.pretrained", hint=hint)
    with warnings.catch_warnings():  # loading into meta tensors is a no-op that says so; the fit is the point
        warnings.simplefilter("ignore")
        load_backbone(skeleton(arch, 2, image_size, model_kwargs, **head), state, path)
