"""The reference pages written from the code, so that nothing about a key or an option is written twice: every
suite key from the schema (its type, default, allowed values and `description=`), every command from the CLI
(typer's own Markdown). docs/hooks.py puts them into the site as it builds."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union

from annotated_types import MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bench.config import (
    FREEZE_MODES,
    CellConfig,
    DataConfig,
    Dimension,
    ModelConfig,
    Resources,
    SuiteMeta,
    SyntheticConfig,
    TrainConfig,
    Tune,
)
from bench.config.suite import Log

# a suite file's tables, in the order a reader meets them: (title, anchor, model, prefix of its keys)
TABLES: list[tuple[str, str, type[BaseModel], str]] = [
    ("`[suite]`", "suite", SuiteMeta, "suite."),
    ("`[data]`", "data", DataConfig, "data."),
    ("`[data.synthetic]`", "data-synthetic", SyntheticConfig, "data.synthetic."),
    ("`[model]`", "model", ModelConfig, "model."),
    ("`[train]`", "train", TrainConfig, "train."),
    ("`[resources]`", "resources", Resources, "resources."),
    ("`[log]`", "log", Log, "log."),
    ("`[tune]`", "tune", Tune, "tune."),
    ("A range in `tune.space`", "tune-space", Dimension, ""),
]


def keys(model: type[BaseModel] = CellConfig, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf key of a model, dotted (a nested table's keys under its name), with its field."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            out.update(keys(field.annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out


def allowed(key: str) -> list[str]:
    """The names a registry-checked key takes, read from the registries themselves."""
    if key == "model.arch":
        from bench.models.builtins import BUILTINS
        from bench.models.names import PREFIXES

        return [f"`{p}:<name>`" for p in PREFIXES if p != "bench"] + [f"`bench:{n}`" for n in sorted(BUILTINS)]
    if key == "model.freeze":
        return [f"`{m}`" for m in FREEZE_MODES]
    from bench.techniques import AUGMENT_OPS, AUGMENTS, REGISTRIES
    from bench.techniques.augment import op_params

    section, _, name = key.partition(".")
    if section != "train" or name not in REGISTRIES:
        return []
    if name == "augment":  # presets, ops (a value sets an op's first parameter), timm's policy strings
        ops = [f"`{n}:<{op_params(n)[0]}>`" if op_params(n) else f"`{n}`" for n in sorted(AUGMENT_OPS)]
        return [f"`{n}`" for n in AUGMENTS] + ops + ['an inline table `{op = "<op>", <parameter> = ...}`',
                                                    "timm's policy strings (`rand-m9-mstd0.5`, `augmix-m5-w4-d2`, "
                                                    "`original`, `v0`, `3a`, ...)"]
    return [f"`{n}`" for n in sorted(REGISTRIES[name])]


def keys_markdown() -> str:
    """The key reference: one table per suite table, a row per key."""
    parts = []
    for title, anchor, model, prefix in TABLES:
        parts.append(f"## {title} {{#{anchor}}}\n\n{_doc(model)}\n")
        parts.append("| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |")
        for name, field in model.model_fields.items():
            if _is_model(field.annotation):
                continue  # its own table
            key = prefix + name
            cells = [f"`{key}`", _type(field.annotation), _default(field), _allowed(key, field),
                     field.description or ""]
            parts.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def cli_markdown() -> str:
    """Every command with its arguments and options, as typer's own `typer ... utils docs` writes them."""
    import typer
    from typer.cli import get_docs_for_click

    from bench.cli import app

    command = typer.main.get_command(app)
    return get_docs_for_click(obj=command, ctx=typer.Context(command, info_name="bench"), name="bench", indent=1)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _type(annotation: Any, nested: bool = False) -> str:
    """A type as a suite writer reads it (TOML's words); a union inside a list or table in parentheses."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        text = " or ".join(_type(a, True) for a in args if a is not type(None))
        return f"({text})" if nested and " or " in text else text
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else " or ".join(json.dumps(a) for a in args)
    if origin is list or origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list of {_type(args[0], True)}"
    if origin is tuple:
        return f"[{', '.join(_type(a) for a in args)}]"
    if origin is dict:
        value = "range (below)" if args[1] is Dimension else _type(args[1], True)
        return f"table of {_type(args[0], True)} → {value}"
    names = {bool: "boolean", int: "integer", float: "float", str: "string", Any: "any"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.default_factory() if field.default is PydanticUndefined else field.default  # type: ignore[call-arg]
    return "unset" if value is None else f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _allowed(key: str, field: FieldInfo) -> str:
    literals = [f"`{_toml(a)}`" for a in _literals(field.annotation)]
    if typing.get_origin(field.annotation) is dict and literals:
        literals = [f"keys {', '.join(literals)}"]  # the table's keys are what is fixed
    names = literals + allowed(key)
    limits = [f"{sign} {getattr(m, attr)}" for m in field.metadata
              for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if hasattr(m, attr)]
    limits += [f"at least {m.min_length} {'entry' if m.min_length == 1 else 'entries'}"
               for m in field.metadata if isinstance(m, MinLen)]
    pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), None)
    if pattern:
        limits.append(f"matches `{pattern}`")
    return ", ".join(names + limits)


def _literals(annotation: Any) -> list[Any]:
    """The values of every Literal in an annotation (list[Literal[...]] and unions included)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return list(args)
    return [v for a in args for v in _literals(a)]
