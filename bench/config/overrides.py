"""Command-line overrides of a suite file, `KEY=VALUE` the way Hydra and timm users write them (KEY a TOML
dotted key, VALUE TOML, a bare word a string), set in the parsed file before it is validated, so that a
mistake in one reads as a mistake in the file that names the override; the Slurm options over [resources];
and the TOML that records a suite as it ran and shows a cell's resolved config."""

from __future__ import annotations

import copy
import re
import shlex
import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.config.load import flatten, parse_suite, read_suite, setting
from bench.config.suite import SECTIONS, Resources, Suite
from bench.errors import UserError

EXAMPLE = "e.g. train.lr=0.1, model.arch=tv:resnet18 or 'grid.\"train.lr\"=[0.1, 0.01]'"


@dataclass(frozen=True)
class Override:
    text: str  # as given, for errors and the record
    path: tuple[str, ...]  # the key's parts; a grid axis is one part ("grid", "train.lr"), as the file's is
    value: Any


def parse(items: Sequence[str]) -> list[Override]:
    """KEY=VALUE strings as overrides; a VALUE that is not TOML is the string itself (`model.arch=tv:vgg16`)."""
    out = []
    for item in items:
        key, eq, text = item.partition("=")
        path = _key_path(key.strip()) if eq else None
        if not path:
            raise UserError("not a KEY=VALUE override", key=repr(item), hint=EXAMPLE)
        if path[0] == "grid" and len(path) > 2:  # unquoted, as in the file: grid.train.lr is grid."train.lr"
            path = ("grid", ".".join(path[1:]))
        out.append(Override(item, path, _value(text.strip())))
    return out


def load(path: Path, overrides: Sequence[Override]) -> Suite:
    """The suite file at `path` with `overrides` set, validated as the file is."""
    return parse_suite(apply(read_suite(path), overrides, path), path)


def apply(raw: dict[str, Any], overrides: Sequence[Override], file: Path | None = None) -> dict[str, Any]:
    """The parsed suite file with each override set in it (a copy). An override of a [data], [model] or
    [train] key that the grid, a [[cells]] or a [[datasets]] entry also sets would not reach those cells:
    refused, as changing nothing silently would mislead."""
    raw = copy.deepcopy(raw)
    for o in overrides:
        node = raw
        if o.path[0] == "grid" and len(o.path) > 1 and isinstance(raw.get("grid"), dict):
            raw["grid"] = flatten(raw["grid"])  # one spelling per axis: the override replaces the file's
        for part in o.path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a value becomes a table: validation then says the key wants a value
            node = node[part]
        node[o.path[-1]] = o.value
    for o in overrides:
        if o.path[0] in SECTIONS:
            _reaches_every_cell(raw, o, file)
    return raw


def blame(error: UserError, overrides: Sequence[Override]) -> UserError:
    """`error` with the override that set its key named, when one did."""
    key = re.sub(r"\[\d+\]", "", error.key or "")
    # by the keys' text: pydantic names a key inside a dotted name (tune.space."train.lr") unquoted
    key = ".".join(_key_path(key) or [key])
    hit = next((o for o in overrides if key and setting([".".join(o.path)], key)), None)
    if hit is None:
        return error
    note = f"(set on the command line: {hit.text})"
    return UserError(error.reason if error.hint else f"{error.reason} {note}", file=error.file, key=error.key,
                     hint=f"{error.hint} {note}" if error.hint else None)


def suite_text(path: Path, overrides: Sequence[Override]) -> str:
    """The suite as it runs, for the results folder's suite.toml: the file itself, or with overrides the file
    with them set (rewritten: its comments are not kept)."""
    if not overrides:
        return Path(path).read_text()
    import tomli_w

    given = " ".join(shlex.quote(o.text) for o in overrides)
    return f"# {path} with the command-line overrides {given}, as it ran\n\n" + \
        tomli_w.dumps(apply(read_suite(path), overrides))


def resources(given: Resources, sbatch: Sequence[str] = (), **options: Any) -> Resources:
    """The suite's [resources] with the command line's Slurm options over them (`sbatch` as KEY=VALUE
    strings, added to the suite's), validated as the file is; an error names the option."""
    extra = {}
    for item in sbatch:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--sbatch {item!r} is not KEY=VALUE", key="--sbatch", hint="e.g. --sbatch qos=high")
        extra[key.strip()] = value.strip()
    options = {k: v for k, v in options.items() if v is not None}
    if extra:
        options["sbatch"] = {**given.sbatch, **extra}
    try:
        return Resources.model_validate({**given.model_dump(), **options})
    except ValidationError as e:
        err = e.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-")
        raise UserError(f"{err['msg']} (got {err.get('input')!r})", key=option) from None


def config_toml(config: dict[str, Any], title: str) -> str:
    """A cell's resolved config as TOML under a `title` comment; TOML has no null, so the keys left unset
    are named in a comment at the end."""
    import tomli_w

    unset = [k for k, v in flatten(config).items() if v is None]
    set_ = _without_none(config)
    tail = textwrap.fill(f"unset: {', '.join(unset)}", 108, initial_indent="# ", subsequent_indent="# ")
    return f"# {title}\n{tomli_w.dumps(set_)}" + (f"\n{tail}\n" if unset else "")


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _reaches_every_cell(raw: dict[str, Any], o: Override, file: Path | None) -> None:
    key = ".".join(o.path)
    sets = partial(setting, key=key)
    tune = raw.get("tune")
    space = tune.get("space") if isinstance(tune, dict) else None
    searched = sets(space) if isinstance(space, dict) else None
    if searched:
        raise UserError(f"[tune] searches {searched} for every trial, so the override {o.text} would change "
                        "nothing", file=file, key=f'tune.space."{searched}"',
                        hint=f"override the range instead: 'tune.space.\"{searched}\"={{low = ..., high = ...}}'")
    grid = raw.get("grid")
    axis = sets(flatten(grid)) if isinstance(grid, dict) else None
    if axis:
        raise UserError(f"the grid sets {axis} for every cell, so the override {o.text} would change nothing",
                        file=file, key=f'grid."{axis}"', hint=f"override the axis instead: 'grid.\"{axis}\"=[...]'")
    for table, prefix in (("cells", ""), ("datasets", "data.")):
        entries = raw.get(table)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            hit = sets(f"{prefix}{k}" for k in flatten(entry)) if isinstance(entry, dict) else None
            if hit:
                raise UserError(f"sets {hit} for its cells, so the override {o.text} would not reach them",
                                file=file, key=f"{table}[{i}]", hint=f"set {key} in the file's [[{table}]] "
                                                                     "entries instead")


def _key_path(key: str) -> tuple[str, ...] | None:
    """A TOML dotted key's parts (quoted parts stay whole), or None when it is not one."""
    try:
        node: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return None
    parts = []
    while isinstance(node, dict):
        if len(node) != 1:
            return None
        (part, node), = node.items()
        parts.append(part)
    return tuple(parts)


def _value(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if list(parsed) == ["v"] else text
