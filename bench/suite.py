"""Expansion of a suite into cells: [[cells]] x [grid] x seeds, each a fully resolved, validated config."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from bench.config import SECTIONS, CellConfig, Suite, _to_user_error, flatten
from bench.errors import UserError


@dataclass(frozen=True)
class Cell:
    config: CellConfig
    label: str
    axes: dict[str, Any]  # the dotted keys that vary across the suite, with this cell's values
    explicit_label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return config_hash(self.config.model_dump(mode="json"))

    @property
    def group(self) -> str:
        """Same for every seed of one cell: reports average over a group."""
        return config_hash({**self.config.model_dump(mode="json"), "seed": None})

    @property
    def seed(self) -> int:
        return self.config.seed


def config_hash(obj: Any, n: int = 10) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):  # e.g. "data.split.x": split is a value, not a table
            raise UserError(f"'{p}' is a value, not a table", key=key)
        tree = node
    tree[leaf] = value


def _grid_entries(suite: Suite) -> list[tuple[str, list[Any]]]:
    for key, values in suite.grid.items():
        if not isinstance(values, list) or not values:
            raise UserError("must be a non-empty list of values", file=suite.path, key=f'grid."{key}"',
                            hint=f'write "{key}" = [value1, value2]')
    return list(suite.grid.items())


def expand(suite: Suite) -> list[Cell]:
    """Every cell of the suite, validated; errors name the grid key or [[cells]] entry that caused them."""
    grid = _grid_entries(suite)
    explicit = suite.cells or [{}]
    resolved: list[tuple[CellConfig, str | None, dict[str, Any], dict[str, Any]]] = []
    for ci, cell_table in enumerate(explicit):
        label = cell_table.get("label")
        if label is not None and not isinstance(label, str):
            raise UserError("must be a string", file=suite.path, key=f"cells[{ci}].label")
        cell_over = flatten({k: v for k, v in cell_table.items() if k != "label"})
        for combo in itertools.product(*(values for _, values in grid)):
            grid_over = {key: value for (key, _), value in zip(grid, combo, strict=True)}
            for seed in suite.suite.seeds:
                overrides = {**cell_over, **grid_over}
                config = _resolve(suite, overrides, seed, cell_over, grid_over, ci if suite.cells else None)
                resolved.append((config, label, cell_over, grid_over))
    return _label(suite, resolved)


def _resolve(suite: Suite, overrides: dict[str, Any], seed: int, cell_over: dict, grid_over: dict,
             cell_index: int | None) -> CellConfig:
    tree = copy.deepcopy(suite.base)
    for key, value in overrides.items():
        if key.split(".")[0] not in SECTIONS:  # seeds come from [suite] seeds, never per cell
            where = f'grid."{key}"' if key in grid_over else f"cells[{cell_index}].{key}"
            raise UserError("unknown key", file=suite.path, key=where,
                            hint="keys are dotted: data.*, model.*, train.* (see README)")
        try:
            set_dotted(tree, key, value)
        except UserError as e:
            raise UserError(e.reason, file=suite.path, key=key) from None
    tree["seed"] = seed
    try:
        return CellConfig.model_validate(tree)
    except ValidationError as e:
        err = _to_user_error(e, suite.path, model=CellConfig)
        dotted = err.key or ""
        # Name where the bad value came from: the grid, a [[cells]] entry, or the section default.
        for key in grid_over:
            if dotted == key or dotted.startswith(key + "."):
                err = UserError(err.reason + f" (value {grid_over[key]!r})", file=suite.path,
                                key=f'grid."{key}"', hint=err.hint)
                break
        else:
            if cell_index is not None and any(dotted == k or dotted.startswith(k + ".") for k in cell_over):
                err = UserError(err.reason, file=suite.path, key=f"cells[{cell_index}].{dotted}", hint=err.hint)
        raise err from None


def _label(suite: Suite, resolved: list[tuple[CellConfig, str | None, dict, dict]]) -> list[Cell]:
    dumps = [flatten(c.model_dump(mode="json")) for c, *_ in resolved]
    varying = [k for k in dumps[0] if k != "seed" and len({json.dumps(d[k]) for d in dumps}) > 1]
    cells, seen = [], set()
    for (config, label, cell_over, grid_over), flat in zip(resolved, dumps, strict=True):
        axes = {k: flat[k] for k in varying}
        parts = [label] if label else []
        parts += [f"{k.split('.')[-1]}={_short(flat[k])}" for k in varying if not (label and k in cell_over)]
        cell = Cell(config=config, label=" ".join(parts) or "default", axes=axes, explicit_label=label,
                    overrides={**cell_over, **grid_over})
        if cell.id in seen:  # two entries resolving to the same config would share one results folder
            raise UserError(f"two cells resolve to the same config ({cell.label})", file=suite.path, key="cells",
                            hint="remove the duplicate [[cells]] entry or grid value")
        seen.add(cell.id)
        cells.append(cell)
    return cells


def _short(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def preflight(suite: Suite, cells: list[Cell]) -> None:
    """Checks that need the file system, done before anything trains: data folders and weights files."""
    from pathlib import Path

    for cell in cells:
        data, model = cell.config.data, cell.config.model
        if data.source == "folder" and not Path(data.root).is_dir():
            raise UserError(f"data folder '{data.root}' does not exist", file=suite.path, key="data.root",
                            hint="put the data there (see README, 'Data'), fix the path, or try --smoke")
        if isinstance(model.pretrained, str) and not Path(model.pretrained).is_file():
            raise UserError(f"weights file '{model.pretrained}' does not exist", file=suite.path,
                            key="model.pretrained", hint="give an existing .safetensors/.pt file, true, or false")
