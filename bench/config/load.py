"""Reading a suite file: TOML to a validated Suite, with every error one line (file, key, reason, hint)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bench.config.base import NAME_PATTERN
from bench.config.suite import SECTIONS, Log, Resources, Suite, SuiteMeta, Tune
from bench.errors import UserError, did_you_mean


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (its sections and tables); bench.suite.expand then validates each cell."""
    return parse_suite(read_suite(path), Path(path))


def read_suite(path: str | Path) -> dict[str, Any]:
    """A suite file's TOML, not yet validated (command-line overrides are set in it first)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such suite file", file=path, hint="give the path to a .toml suite, e.g. suites/quickstart.toml")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"not valid TOML ({e})", file=path) from None


def parse_suite(raw: dict[str, Any], path: Path) -> Suite:
    """The parsed TOML of the suite file at `path` as a validated Suite; errors name `path`."""
    known = ("suite", *SECTIONS, "grid", "cells", "resources", "log", "tune", "datasets")
    for key in raw:
        if key not in known:
            raise UserError("unknown table", file=path, key=key, hint=did_you_mean(key, known))
    for key in ("suite", *SECTIONS, "grid", "resources", "log", "tune"):
        if key in raw and not isinstance(raw[key], dict):
            raise UserError("must be a table", file=path, key=key, hint=f"write it as [{key}]")
    if "suite" not in raw:
        raise UserError("missing [suite] table", file=path, hint='add [suite] with name = "..."')
    try:
        meta = SuiteMeta.model_validate(raw["suite"])
    except ValidationError as e:
        raise validation_error(e, path, prefix="suite") from None
    grid = check_grid(flatten(raw.get("grid", {})), path)  # `model.arch = [...]` unquoted nests: same as quoted
    cells = raw.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise UserError("must be an array of tables", file=path, key="cells", hint="write each as [[cells]]")
    resources = _table(Resources, raw.get("resources", {}), path, "resources")
    log = _table(Log, raw.get("log", {}), path, "log")
    tune = _table(Tune, raw["tune"], path, "tune") if "tune" in raw else None
    datasets = check_datasets(raw.get("datasets", []), path)
    return Suite(path=path, suite=meta, base={k: raw.get(k, {}) for k in SECTIONS}, grid=grid, cells=cells,
                 resources=resources, log=log, tune=tune, datasets=datasets)


def _table(model: type[BaseModel], value: Any, path: Path, prefix: str) -> Any:
    """One of the suite's own tables validated, a mistake in it one line naming the file and the key."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise validation_error(e, path, prefix=prefix, model=model) from None


def check_datasets(datasets: Any, path: Path) -> list[dict[str, Any]]:
    """[[datasets]]: an array of tables, each with a unique name; their data keys are validated with the cells."""
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise UserError("must be an array of tables", file=path, key="datasets", hint="write each as [[datasets]]")
    names = []
    for i, d in enumerate(datasets):
        name = d.get("name")
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            raise UserError("needs name = \"...\" (letters, digits, _ . -)", file=path, key=f"datasets[{i}].name")
        if name in names:
            raise UserError(f"dataset name '{name}' is used twice", file=path, key=f"datasets[{i}].name",
                            hint="give each [[datasets]] entry its own name")
        names.append(name)
    return datasets


def check_grid(grid: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """`grid`, once every axis is a non-empty list: a bare value is a likely slip for a one-value axis."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            example = f"[{values!r}]" if not isinstance(values, list) else "[value1, value2]"
            raise UserError("must be a non-empty list of values" + ("" if isinstance(values, list) else
                                                                     f", not {values!r}"),
                            file=path, key=f'grid."{key}"', hint=f'write "{key}" = {example}')
    return grid


def setting(keys, key: str) -> str | None:
    """The first of the dotted `keys` that sets `key`: the key itself, a table holding it, or a key inside it
    (data.annotations.train and "data.annotations" set each other)."""
    return next((k for k in keys if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'arch': x}} and {'model.arch': x} both become {'model.arch': x}. An empty table stays a value:
    `"model.kwargs" = {}` in a [[cells]] entry clears the base's keyword arguments."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def validation_error(e: ValidationError, path: Path, prefix: str = "", model: type[BaseModel] | None = None
                     ) -> UserError:
    """Turn pydantic's first error into one line: file, dotted key, reason, and a 'did you mean'."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = ".".join(([prefix] if prefix else []) + loc)
    hint = None
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
        fields = _fields_at(model or SuiteMeta, loc[:-1]) if model or prefix == "suite" else []
        hint = did_you_mean(loc[-1], fields) if fields else None
    else:
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error",) and "input" in err and not isinstance(err["input"], dict):
            reason += f" (got {err['input']!r})"
    return UserError(reason, file=path, key=key, hint=hint)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)
