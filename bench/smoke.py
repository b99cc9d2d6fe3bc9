"""--smoke: every cell of a suite on a tiny generated stand-in of its data, a few short epochs, no download.

It proves that each cell runs end to end (model, head, freezing, data path, results) in CI, without the
real data. `smoke_suite` is a transform of the suite file's tables, made before expansion: the smoke suite
is then expanded and validated like any other, so its cell ids are computed once, by bench.suite.

Each key below is shrunk wherever the suite sets it (a section, a [[cells]] entry, a grid axis) and where
it does not (its default). Values that two cells differ in stay different: when shrinking would merge two
cells of the suite into one, the values of the keys they differ in are spread over a small ladder instead
(three epoch counts become 1, 2 and 3 epochs), so every cell of the suite still runs under --smoke.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from bench.cell import Cell
from bench.config import CellConfig, Suite, SyntheticConfig, flatten
from bench.data import synthetic
from bench.data.cachedir import cache_root
from bench.data.sources import scan_folder
from bench.hashing import stable_hash
from bench.models import create_model
from bench.suite import expand, set_dotted

SIZES = (32, 64, 96, 128, 160, 224)
CLASSES, IMAGES, STEPS, BATCH, EVAL_BATCH = 4, 64, 2, 8, 32
TRIALS = 2  # per tuned contender: --smoke proves that trials run, not that tuning finds anything


@cache
def accepted_size(arch: str) -> int:
    """The smallest of SIZES a forward pass of `arch` accepts (AlexNet needs 63 px, Inception v3 75)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for size in SIZES:
            try:
                model = create_model(arch, CLASSES, size).eval()
                model(torch.zeros(2, 3, size, size))
                return size
            except (RuntimeError, ValueError):
                continue
    return SIZES[-1]


@dataclass(frozen=True)
class Shrink:
    small: Callable[[Any], Any]  # the smoke value of one value
    ladder: Callable[[list], list] | None = None  # distinct values, ascending -> distinct smoke values


def _steps(start: float, step: float) -> Callable[[list], list]:
    return lambda values: [start + step * i for i in range(len(values))]


def _rules(size: int) -> dict[str, Shrink]:
    """`size`: the smallest image side every architecture of the suite accepts."""
    sizes = [size, *(s for s in SIZES if s > size), *range(SIZES[-1] + 8, 4096, 8)]
    stand_in = max(size, 32)
    return {
        "data.image_size": Shrink(lambda v: size, lambda vs: sizes[:len(vs)]),
        "data.cache_size": Shrink(lambda v: None),
        "data.workers": Shrink(lambda v: 0),
        "data.min_side": Shrink(lambda v: 0, _steps(0, 1)),
        "data.min_per_class": Shrink(lambda v: min(v, 2), lambda vs: _steps(min(vs[0], 2), 1)(vs)),
        "data.fraction": Shrink(lambda v: 1.0, lambda vs: _steps(1.0 - 0.05 * (len(vs) - 1), 0.05)(vs)),
        "data.synthetic.classes": Shrink(lambda v: CLASSES, _steps(CLASSES, 1)),
        "data.synthetic.images": Shrink(lambda v: IMAGES, _steps(IMAGES, 8)),
        "data.synthetic.size": Shrink(lambda v: stand_in, _steps(stand_in, 8)),
        "data.synthetic.imbalance": Shrink(lambda v: 2.0, _steps(2.0, 0.5)),
        "model.pretrained": Shrink(lambda v: False),  # no download; a local weights file would need the real one
        "train.epochs": Shrink(lambda v: 1, _steps(1, 1)),
        "train.cooldown_epochs": Shrink(lambda v: 0.0, _steps(0.0, 0.25)),  # must stay below the epochs
        "train.batch_size": Shrink(lambda v: min(v, BATCH), _steps(4, 2)),
        "train.eval_batch_size": Shrink(lambda v: EVAL_BATCH),
        "train.max_steps": Shrink(lambda v: STEPS),
    }


def _js(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _value_maps(flats: Sequence[dict[str, Any]], rules: dict[str, Shrink]) -> dict[str, dict[str, Any]]:
    """key -> {json of a value the cells use: its smoke value}. Keys are spread over their ladder only where
    shrinking them would merge cells (repeated until no new key needs it: each round spreads at least one)."""
    spread: set[str] = set()
    while True:
        maps = {}
        for key, rule in rules.items():
            values = list({_js(f[key]): f[key] for f in flats}.values())
            if key in spread and rule.ladder is not None:  # numbers alone have ladders
                values.sort()
                maps[key] = dict(zip(map(_js, values), rule.ladder(values), strict=True))
            else:
                maps[key] = {_js(v): rule.small(v) for v in values}
        groups: dict[str, list[dict]] = defaultdict(list)
        for f in flats:
            groups[_js(_shrunk(f, maps))].append(f)
        merged = {k for g in groups.values() if len(g) > 1 for k in rules
                  if rules[k].ladder is not None and len({_js(f[k]) for f in g}) > 1}
        if not merged - spread:
            return maps  # merges left (cells that differ only in model.pretrained) are refused by expand
        spread |= merged


def _shrunk(flat: dict[str, Any], maps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A cell's flattened config as the smoke maps leave it."""
    return {k: maps[k][_js(v)] if k in maps and _js(v) in maps[k] else v for k, v in flat.items()}


def stand_in_root(root: str, formats: set[tuple], stand_in: SyntheticConfig) -> Path:
    """Generated images standing in for the data at `root`, in every format the suite reads it in: an image
    folder, plus each csv manifest and iNat JSON that a cell names (formats: (source, manifest, annotations))."""
    folder = cache_root() / "smoke" / stable_hash([stand_in.model_dump(), root, sorted(formats)], 16)
    synthetic.generate(stand_in, folder)
    samples = scan_folder(folder)
    for source, manifest, files_of in formats:
        if source == "csv":
            lines = ["path,label"] + [f"{p},{samples.classes[y]}" for p, y in
                                      zip(samples.paths, samples.labels, strict=True)]
            (folder / manifest).parent.mkdir(parents=True, exist_ok=True)
            (folder / manifest).write_text("\n".join(lines) + "\n")
        elif source == "inat":
            files = dict(files_of)
            cats = [{"id": i, "name": c, "supercategory": "Synthetic"} for i, c in enumerate(samples.classes)]
            names = [n for n in ("train", "val") if n in files]
            for part, name in enumerate(names):  # every other image to val, when the suite reads a val file
                rows = [i for i in range(len(samples.paths)) if len(names) == 1 or i % 2 == part]
                doc = {"images": [{"id": i, "file_name": samples.paths[i]} for i in rows],
                       "annotations": [{"id": i, "image_id": i, "category_id": int(samples.labels[i])} for i in rows],
                       "categories": cats}
                (folder / files[name]).parent.mkdir(parents=True, exist_ok=True)
                (folder / files[name]).write_text(json.dumps(doc))
    return folder


def _root_map(cells: list[Cell], size: int) -> dict[str, Any]:
    """data.root -> its stand-in folder (None, the synthetic source's cache, stays None)."""
    stand_in = SyntheticConfig(classes=CLASSES, images=IMAGES, imbalance=2.0, size=max(size, 32))
    formats: dict[str, set[tuple]] = defaultdict(set)
    for c in cells:
        d = c.config.data
        if d.root is not None and d.source != "synthetic":
            formats[d.root].add((d.source, d.manifest, tuple(sorted(d.annotations.items()))))
    return {_js(root): str(stand_in_root(root, f, stand_in)) for root, f in formats.items()}


def _rewrite(key: str, value: Any, maps: dict[str, dict[str, Any]], rules: dict[str, Shrink]) -> Any:
    """`value`, written under dotted `key`, with every shrunk key inside it replaced."""
    if key in maps:
        if _js(value) in maps[key]:
            return maps[key][_js(value)]
        # a value no cell uses (overridden everywhere): shrink it alone
        return rules[key].small(value) if key in rules else value
    if isinstance(value, dict):
        return {k: _rewrite(f"{key}.{k}", v, maps, rules) for k, v in value.items()}
    return value


def smoke_suite(suite: Suite) -> Suite:
    """The suite as --smoke runs it: same cells, labels and stages, tiny data, results in <name>-smoke."""
    cells = expand(suite)  # the real suite, validated first: its architectures decide the stand-in's size
    size = max(accepted_size(c.config.model.arch) for c in cells)
    rules = _rules(size)
    flats = [flatten(c.config.model_dump(mode="json")) for c in cells]
    maps = {**_value_maps(flats, rules), "data.root": _root_map(cells, size)}
    defaults = flatten(CellConfig().model_dump(mode="json"))
    base = {section: _rewrite(section, table, maps, rules) for section, table in suite.base.items()}
    for key in rules:  # keys the sections leave at their defaults are shrunk there too
        written = flatten(base)
        if key not in written:
            set_dotted(base, key, _rewrite(key, defaults[key], maps, rules))
    grid = {key: [_rewrite(key, v, maps, rules) for v in values] for key, values in suite.grid.items()}
    entries = [{k: v if k == "label" else _rewrite(k, v, maps, rules) for k, v in flatten(entry).items()}
               for entry in suite.cells]
    meta = suite.suite.model_copy(update={"name": suite.suite.name + "-smoke"})
    # a data set's keys are data.* keys written relative to [data]: shrunk, and their roots stood in, alike
    datasets = [{"name": d["name"], **{k: _rewrite(f"data.{k}", v, maps, rules)
                                       for k, v in flatten({k: v for k, v in d.items() if k != "name"}).items()}}
                for d in suite.datasets]
    small = Suite(path=suite.path, suite=meta, base=base, grid=grid, cells=entries, resources=suite.resources,
                  tune=suite.tune and suite.tune.model_copy(update={"trials": min(suite.tune.trials, TRIALS)}),
                  datasets=datasets)
    # cells that only hub weights told apart (study 001's scratch vs fine-tuned) would merge without them
    if len({_js(_shrunk(f, maps)) for f in flats}) < len(flats):
        for entry, cell_table in zip(entries, suite.cells, strict=True):
            cell = next(c for c in cells if c.explicit_label == cell_table.get("label"))
            if cell.config.model.pretrained is True and "model.arch" not in suite.grid:
                entry["model.pretrained"] = str(stand_in_weights(cell.config.model.arch, size))
        small = small.model_copy(update={"cells": entries})
    return small


def stand_in_weights(arch: str, size: int) -> Path:
    """Random weights saved as a local file standing in for `arch`'s hub weights, so that a cell trained from
    them stays apart from one trained from scratch (never downloads; the same file every run)."""
    from safetensors.torch import save_model

    from bench.store import atomic_path

    path = cache_root() / "smoke" / "weights" / f"{arch.replace(':', '_')}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = create_model(arch, CLASSES, size)
        with atomic_path(path) as tmp:
            save_model(model, str(tmp))
    return path
