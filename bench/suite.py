"""Expansion of a suite into cells: [[datasets]] x [[cells]] x [grid] x seeds, each a fully resolved,
validated config.

Validation has two passes per cell: the schema (bench.config, pure data), then `check_names`, which looks
up every name a registry owns (architectures, optimizers, schedules, augmentations, ...). Both report the
place in the suite file that set the bad value: a grid axis, a [[cells]] entry, a [[datasets]] entry, or a
section default.

A [[datasets]] entry is one more axis, named "dataset": its keys (relative to [data]) override [data], and
[[cells]] and [grid] override them in turn, so a grid over data.image_size still means what it says on
every data set. Its name, not the data keys it sets, goes into the cell's axes and label, so that a report
can tell "the same configuration on another data set" (the label without its dataset=... part).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from bench.config import SECTIONS, CellConfig, DataConfig, Suite, check_grid, flatten, validation_error
from bench.errors import UserError, did_you_mean
from bench.hashing import stable_hash

ID_DIGITS = 10  # hex digits of a cell id: the folder name under results/<suite>/


@dataclass(frozen=True)
class Cell:
    config: CellConfig
    label: str
    axes: dict[str, Any]  # the dotted keys that vary across the suite, with this cell's values
    explicit_label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    grid_values: str = ""  # this cell's [grid] combination (JSON); with label and seed it finds a parent
    parent: str | None = None  # id of the cell whose best weights it starts from (model.init_from), see link()
    dataset: str | None = None  # the [[datasets]] entry's name; a staged cell's parent is on the same one

    @property
    def id(self) -> str:
        spec = identity(self.config)
        # A staged cell's numbers depend on its parent's weights: another parent makes another cell.
        return stable_hash(spec if self.parent is None else {**spec, "parent": self.parent}, ID_DIGITS)

    @property
    def group(self) -> str:
        """Same for every seed of one cell: reports average over a group."""
        return stable_hash({**identity(self.config), "seed": None}, ID_DIGITS)

    @property
    def seed(self) -> int:
        return self.config.seed


def identity(config: BaseModel) -> dict[str, Any]:
    """What a cell's id hashes: the keys whose values differ from bench's defaults. A key that a new bench
    adds (at a default that keeps today's behaviour) leaves every existing cell's id, and so its finished
    results, as they were; changing a default's meaning is a SCHEMA_VERSION bump, not a silent new id."""
    return config.model_dump(mode="json", exclude_defaults=True)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):  # e.g. "data.split.x": split is a value, not a table
            raise UserError(f"'{p}' is a value, not a table", key=key)
        tree = node
    tree[leaf] = value


def _grid_entries(suite: Suite) -> list[tuple[str, list[Any]]]:
    return list(check_grid(suite.grid, suite.path).items())  # again: a Suite may be built in code (smoke)


DATASET = "dataset"  # the axis a [[datasets]] entry's name is recorded under (cell.json axes, labels)


def dataset_overrides(suite: Suite) -> list[tuple[str | None, dict[str, Any]]]:
    """(name, {data.<key>: value}) per [[datasets]] entry; one nameless entry without [[datasets]], so that a
    suite without them expands exactly as it always did."""
    if not suite.datasets:
        return [(None, {})]
    return [(d["name"], {f"data.{k}": v for k, v in flatten({k: v for k, v in d.items() if k != "name"}).items()})
            for d in suite.datasets]


def expand(suite: Suite) -> list[Cell]:
    """Every cell of the suite, validated; errors name the grid key, [[cells]] or [[datasets]] entry that
    caused them."""
    grid = _grid_entries(suite)
    explicit = suite.cells or [{}]
    resolved: list[Resolved] = []
    checked: dict[str, UserError | None] = {}
    for di, (dataset, data_over) in enumerate(dataset_overrides(suite)):
        for ci, cell_table in enumerate(explicit):
            label = cell_table.get("label")
            if label is not None and not isinstance(label, str):
                raise UserError("must be a string", file=suite.path, key=f"cells[{ci}].label")
            cell_over = flatten({k: v for k, v in cell_table.items() if k != "label"})
            for combo in itertools.product(*(values for _, values in grid)):
                grid_over = {key: value for (key, _), value in zip(grid, combo, strict=True)}
                for seed in suite.suite.seeds:
                    where = Where(cell_over, grid_over, ci if suite.cells else None,
                                  data_over, di if dataset is not None else None)
                    config = _resolve(suite, seed, where, checked)
                    resolved.append(Resolved(config, label, cell_over, grid_over, dataset))
    cells = _label(suite, resolved)
    _check_features(suite, cells)
    return link(cells, suite)


@dataclass(frozen=True)
class Where:
    """What one cell's overrides are and where in the suite file each came from, for error messages."""
    cell_over: dict[str, Any]
    grid_over: dict[str, Any]
    cell_index: int | None  # its [[cells]] entry, if the suite has any
    data_over: dict[str, Any] = field(default_factory=dict)  # data.<key> of its [[datasets]] entry
    dataset_index: int | None = None

    def key(self, key: str) -> str:
        if key in self.grid_over:
            return f'grid."{key}"'
        if key in self.cell_over:
            return f"cells[{self.cell_index}].{key}"
        return f"datasets[{self.dataset_index}].{key.removeprefix('data.')}"


@dataclass(frozen=True)
class Resolved:
    config: CellConfig
    label: str | None
    cell_over: dict[str, Any]
    grid_over: dict[str, Any]
    dataset: str | None


def _resolve(suite: Suite, seed: int, where: Where, checked: dict[str, UserError | None]) -> CellConfig:
    tree = copy.deepcopy(suite.base)
    # later wins: a [[datasets]] entry over [data], then the [[cells]] entry, then the grid combination
    for key, value in {**where.data_over, **where.cell_over, **where.grid_over}.items():
        if key.split(".")[0] not in SECTIONS:  # seeds come from [suite] seeds, never per cell
            raise UserError("unknown key", file=suite.path, key=where.key(key),
                            hint="keys are dotted: data.*, model.*, train.* (see README)")
        try:
            set_dotted(tree, key, value)
        except UserError as e:
            raise UserError(e.reason, file=suite.path, key=where.key(key)) from None
    tree["seed"] = seed
    try:
        config = CellConfig.model_validate(tree)
        check_names(config, checked)
    except ValidationError as e:
        raise _located(validation_error(e, suite.path, model=CellConfig), suite, where) from None
    except UserError as e:
        raise _located(e, suite, where) from None
    return config


def _located(err: UserError, suite: Suite, where: Where) -> UserError:
    """The error re-addressed to where the bad value came from: the grid, a [[cells]] entry, a [[datasets]]
    entry, or the section."""
    dotted = err.key or ""

    def sets(keys: dict[str, Any]) -> str | None:
        return next((k for k in keys if dotted == k or dotted.startswith(k + ".")), None)

    if key := sets(where.grid_over):
        return UserError(err.reason + f" (value {where.grid_over[key]!r})", file=suite.path, key=f'grid."{key}"',
                         hint=err.hint)
    if where.cell_index is not None and sets(where.cell_over):
        return UserError(err.reason, file=suite.path, key=f"cells[{where.cell_index}].{dotted}", hint=err.hint)
    # a pydantic error on a table ("data.data", an unknown key whose value is a table) names the table
    entry = next((k for k in where.data_over if dotted == k or dotted.startswith(k + ".") or
                  ("." in dotted and k.startswith(dotted + "."))), None)
    if where.dataset_index is not None and entry:
        hint = err.hint
        if entry.startswith("data.data."):  # keys are relative to [data]: "data.source" is data.data.source
            short = entry.removeprefix("data.data.")
            hint = f'keys of [[datasets]] are relative to [data]: write "{short}", not "data.{short}"'
        return UserError(err.reason, file=suite.path,
                         key=f"datasets[{where.dataset_index}].{dotted.removeprefix('data.')}", hint=hint)
    return UserError(err.reason, file=suite.path, key=dotted, hint=err.hint)


def _registry_checks(cfg: CellConfig) -> list[tuple[str, Any, Callable[[], Any]]]:
    """(dotted key, value, check) for every value that names something in a registry; a check raises
    ValueError with the reason. Imported here, not in bench.config, so that parsing needs no torch."""
    from bench.models import check_arch
    from bench.techniques import REGISTRIES, build_tta
    from bench.techniques.augment import check_augment

    def member(field: str, name: str) -> Callable[[], None]:
        def check() -> None:
            if name not in REGISTRIES[field]:
                raise ValueError(f"unknown {field} '{name}'; {did_you_mean(name, REGISTRIES[field])}")
        return check

    def optimizer_settings() -> None:  # what the optimizer would refuse only once the cell starts
        from bench.techniques.optimizers import optimizer_settings

        if t.optimizer in REGISTRIES["optimizer"]:
            try:
                optimizer_settings(t.optimizer, t)
            except UserError as e:
                raise ValueError(e.reason) from None

    def model_kwargs() -> None:  # the constructor's verdict, on the meta device: milliseconds
        from bench.models.factory import skeleton

        if cfg.model.kwargs:
            try:
                skeleton(cfg.model.arch, 2, cfg.data.image_size, cfg.model.kwargs)
            except UserError as e:
                raise ValueError(f"{e.reason}; {e.hint}") from None

    def layer_decay() -> None:
        if t.layer_decay is not None and not cfg.model.arch.startswith("timm:"):
            raise ValueError(f"layer-wise lr decay needs a timm: architecture (timm's group_matcher names its "
                             f"layers), not {cfg.model.arch}; use backbone_lr for one lower rate below the head")

    t = cfg.train
    return [("model.arch", cfg.model.arch, lambda: check_arch(cfg.model.arch)),
            *[(f"train.{f}", getattr(t, f), member(f, getattr(t, f)))
              for f in ("optimizer", "schedule", "loss", "sampler", "mix")],
            ("train.betas", [t.optimizer, t.betas], optimizer_settings),
            ("train.layer_decay", [cfg.model.arch, t.layer_decay], layer_decay),
            ("model.kwargs", [cfg.model.arch, cfg.data.image_size, cfg.model.kwargs], model_kwargs),
            ("train.augment", t.augment, lambda: check_augment(t.augment)),
            ("train.tta", t.tta, lambda: build_tta(t.tta))]


def check_names(cfg: CellConfig, checked: dict[str, UserError | None] | None = None) -> None:
    """Raise UserError(key=the dotted key) for the first name no registry knows. `checked` memoises the
    verdict per (key, value): a 1,000-cell grid builds each augmentation pipeline once, not 1,000 times."""
    checked = {} if checked is None else checked
    for key, value, check in _registry_checks(cfg):
        memo = f"{key}={json.dumps(value, sort_keys=True)}"
        if memo not in checked:
            try:
                check()
                checked[memo] = None
            except ValueError as e:
                checked[memo] = UserError(str(e), key=key)
        if checked[memo] is not None:
            raise checked[memo]


def _label(suite: Suite, resolved: list[Resolved]) -> list[Cell]:
    dumps = [flatten(r.config.model_dump(mode="json")) for r in resolved]
    # keys that vary only because the data set does are shown by its name, not one by one
    by_dataset = {k for _, over in dataset_overrides(suite) for k in over}
    elsewhere = {k for r in resolved for k in (*r.cell_over, *r.grid_over)}
    # the union of keys: a table-valued field (model.kwargs) flattens to other keys in other cells
    keys = dict.fromkeys(k for d in dumps for k in d)
    varying = [k for k in keys if k != "seed" and len({json.dumps(d.get(k)) for d in dumps}) > 1
               and (k not in by_dataset or k in elsewhere)]
    several = len({r.dataset for r in resolved}) > 1
    cells, seen = [], set()
    for r, flat in zip(resolved, dumps, strict=True):
        axes = {k: flat.get(k) for k in varying}
        parts = [r.label] if r.label else []
        # a [[cells]] label names what its entry sets: only grid values are added to it;
        # model.init_from is shown by `bench plan` as the parent, not in the label
        parts += [f"{k.split('.')[-1]}={_short(flat.get(k))}" for k in varying
                  if (k in r.grid_over if r.label else True) and k != "model.init_from"]
        if r.dataset is not None:
            axes[DATASET] = r.dataset
            if several:  # last, so that the label less its last word names the contender across data sets
                parts.append(f"{DATASET}={r.dataset}")
        cell = Cell(config=r.config, label=" ".join(parts) or "default", axes=axes, explicit_label=r.label,
                    overrides={**r.cell_over, **r.grid_over}, grid_values=json.dumps(r.grid_over, sort_keys=True),
                    dataset=r.dataset)
        if cell.id in seen:  # two entries resolving to the same config would share one results folder
            what = "[[datasets]] entry, [[cells]] entry or grid value" if suite.datasets else \
                "[[cells]] entry or grid value"
            raise UserError(f"two cells resolve to the same config ({cell.label})", file=suite.path,
                            key="datasets" if several and _same_data(resolved) else "cells",
                            hint=f"remove the duplicate {what}")
        seen.add(cell.id)
        cells.append(cell)
    return cells


def _same_data(resolved: list[Resolved]) -> bool:
    """Whether two [[datasets]] entries resolve to the same data config (then they are the duplicate)."""
    data: dict[str, str] = {}
    for r in resolved:
        data.setdefault(r.dataset or "", r.config.data.model_dump_json())
    return len(set(data.values())) < len(data)


def _where(suite: Suite | None, cell: Cell, key: str) -> str:
    """The place in the suite file that set `key` for this cell: a [[cells]] entry, the grid, or a section.
    A key inside a table matches the table's key too (data.annotations.train set by "data.annotations")."""
    if suite is None:
        return key

    def sets(keys) -> str | None:
        return next((k for k in keys if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)

    grid_key = sets(suite.grid)
    if grid_key:
        return f'grid."{grid_key}"'
    for i, entry in enumerate(suite.cells):
        entry_key = sets(flatten(entry))
        if entry.get("label") == cell.explicit_label and entry_key:
            return f"cells[{i}].{entry_key}"
    for i, (name, over) in enumerate(dataset_overrides(suite)):
        data_key = sets(over) if name is not None and name == cell.dataset else None
        if data_key:
            return f"datasets[{i}].{data_key.removeprefix('data.')}"
    return key


def _check_features(suite: Suite, cells: list[Cell]) -> None:
    """freeze = "features" trains on features computed once from the un-augmented images: a technique that
    changes the images the backbone sees would silently not happen."""
    for cell in cells:
        t = cell.config.train
        if cell.config.model.freeze != "features":
            continue
        for key, used in (("augment", t.augment not in ("none", [])), ("mix", t.mix != "none"), ("tta", bool(t.tta))):
            if used:
                raise UserError(f'freeze = "features" computes the features once, from un-augmented images, so '
                                f"train.{key} cannot apply", file=suite.path, key=_where(suite, cell, "model.freeze"),
                                hint=f'use freeze = "all_but_head" with train.{key}, or drop train.{key}')


def link(cells: list[Cell], suite: Suite | None = None) -> list[Cell]:
    """Staged cells (model.init_from = "<label>"): each child gets the id of its parent, the cell with that
    [[cells]] label, the same seed, the same grid values and the same [[datasets]] entry; the list comes back parents first, otherwise in
    order. A parent missing from `cells` (run with --only) keeps the id found when the suite was expanded."""
    path = suite.path if suite else None
    labels = sorted({c.explicit_label for c in cells if c.explicit_label})
    index: dict[tuple, Cell] = {}
    for c in cells:
        if c.explicit_label:
            k = (c.explicit_label, c.seed, c.grid_values, c.dataset)
            if k in index and any(x.config.model.init_from == c.explicit_label for x in cells):
                raise UserError(f"label '{c.explicit_label}' names more than one [[cells]] entry, so "
                                "model.init_from cannot tell which to start from", file=path, key="cells",
                                hint="give each [[cells]] entry its own label")
            index[k] = c
    out: list[Cell] = []
    done: dict[int, Cell] = {}

    def visit(orig: Cell, trail: tuple[str, ...]) -> Cell:
        if id(orig) in done:
            return done[id(orig)]
        c, src = orig, orig.config.model.init_from
        if src is not None:
            where = _where(suite, c, "model.init_from")
            if suite is not None and src not in labels:
                raise UserError(f"'{src}' is not the label of a [[cells]] entry", file=path, key=where,
                                hint=did_you_mean(src, labels) if labels else "add label = \"...\" to the parent entry")
            name = c.explicit_label or c.label
            if src in trail + (name,):
                chain = " -> ".join((*trail, name, src))
                raise UserError(f"model.init_from forms a cycle ({chain})", file=path, key=where,
                                hint="a cell cannot start from itself or from a cell that starts from it")
            parent = index.get((src, c.seed, c.grid_values, c.dataset))
            if parent is not None:
                p, m = parent.config.model, c.config.model
                if (p.arch, p.head_hidden) != (m.arch, m.head_hidden):
                    raise UserError(f"cell '{c.label}' ({m.arch}, head {list(m.head_hidden)}) cannot start from "
                                    f"'{parent.label}' ({p.arch}, head {list(p.head_hidden)})", file=path, key=where,
                                    hint="a staged cell keeps its parent's model.arch and model.head_hidden")
                c = dataclasses.replace(c, parent=visit(parent, (*trail, name)).id)
        done[id(orig)] = c
        out.append(c)
        return c

    for c in cells:
        visit(c, ())
    return out


def _short(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def preflight(suite: Suite, cells: list[Cell], device: str = "auto", *, data: bool = True,
              results: Path | None = None, force: bool = False) -> list[str]:
    """Checks that need the file system, the network or the hardware, made before anything is written, so
    that a mistake is one line and exit 2 rather than a failed cell: the device; with `data`, each data
    config's files as its source reads them and what curation leaves of them (image headers only, cached);
    local weights files and their fit; freeze modes against the network's depth; hub weights (not asked for
    a cell whose initial weights `results`/<suite>/init already holds); the precision on this device; and,
    unless `force`, that the files under the cells `results` holds finished are still the files they were
    trained on. Returns notes for the console: a split carved from the source's train part, once per data."""
    from bench.runner import resolve_device
    from bench.train import precision_setup

    dev = resolve_device(device)  # the same check, and message, as the runner's
    classes: dict[str, int] = {}  # data config -> classes curation keeps (for init keys and model shapes)
    files: dict[str, str] = {}  # data config -> its source's files, as bench.data.files_key names them
    changed: list[Cell] = []
    done: set[str] = set()
    notes: list[str] = []

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
            data_key = d.model_dump_json(exclude={"workers", "image_size", "cache_size"})
            if data and data_key not in classes:
                from bench.data.curate import preview, require_trainable

                samples, keep, steps, files[data_key] = preview(d)
                require_trainable(samples, keep, steps, d)
                classes[data_key] = len(np.unique(samples.labels[keep]))
                notes.extend(_carved(d, samples.given))
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
            raise UserError(e.reason, file=suite.path, key=_where(suite, cell, e.key) if e.key else None,
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
    try:
        result = json.loads((cell_dir / "result.json").read_text())
        recorded = result["data"].get("files") if result.get("status") == "ok" else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return recorded is not None and recorded != files


def _init_saved(cell: Cell, num_classes: int, known: bool, results: Path | None, suite: Suite,
                once: Callable[..., bool]) -> bool:
    """Whether this cell's shared initial weights are saved already (then the runner never asks the hub);
    saved weights that no longer match their seal are refused here, before any cell starts."""
    if results is None or not known or not (Path(results) / suite.suite.name / "init").is_dir():
        return False
    from bench.weights import check_initial, init_key

    path = Path(results) / suite.suite.name / "init" / f"{init_key(cell.config, num_classes)}.safetensors"
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
