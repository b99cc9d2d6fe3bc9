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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError

from bench.cell import Cell, value_text
from bench.config import SECTIONS, CellConfig, Suite, check_grid, flatten, validation_error
from bench.config.load import setting
from bench.errors import UserError, did_you_mean
from bench.suite.names import check_names


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
                            hint="keys are dotted: data.*, model.*, train.* (see docs/suites.md)")
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
        parts += [f"{k.split('.')[-1]}={value_text(flat.get(k))}" for k in varying
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


def where_set(suite: Suite | None, cell: Cell, key: str) -> str:
    """The place in the suite file that set `key` for this cell: a [[cells]] entry, the grid, or a section.
    A key inside a table matches the table's key too (data.annotations.train set by "data.annotations")."""
    if suite is None:
        return key
    sets = partial(setting, key=key)
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
                                f"train.{key} cannot apply", file=suite.path, key=where_set(suite, cell, "model.freeze"),
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
            where = where_set(suite, c, "model.init_from")
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


