"""The [tune] space: Optuna's suggestions per dotted key, a trial's config and cell, and the up-front check
that every contender can take every value the space may sample."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import optuna
from pydantic import ValidationError

from bench.cell import Cell
from bench.config import CellConfig, Dimension, Suite, TrainConfig, validation_error
from bench.errors import UserError
from bench.suite import check_names, set_dotted


def _encoded(dim: Dimension) -> bool:
    """Optuna's categorical choices are scalars; lists and tables (an augment list, head_hidden) go as JSON."""
    return any(not isinstance(c, str | int | float | bool | type(None)) for c in dim.choices or [])


def _choices(dim: Dimension) -> list[Any]:
    return [json.dumps(c, sort_keys=True) for c in dim.choices] if _encoded(dim) else list(dim.choices)


def grid_points(dim: Dimension) -> list[Any]:
    """A dimension's grid: its choices, or low, low + step, ... up to high."""
    if dim.choices is not None:
        return _choices(dim)
    n = int(math.floor((dim.high - dim.low) / dim.step + 1e-9)) + 1
    if dim.integer:
        return [int(dim.low + i * int(dim.step)) for i in range(n)]
    return [float(dim.low + i * dim.step) for i in range(n)]


def grid_space(space: dict[str, Dimension]) -> dict[str, list[Any]]:
    return {key: grid_points(dim) for key, dim in space.items()}


def suggest(trial: optuna.trial.Trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """One value per key, as Optuna's suggest_* draws it (a trial that has them already gets them back)."""
    params = {}
    for key, dim in space.items():
        if dim.choices is not None:
            value = trial.suggest_categorical(key, _choices(dim))
            params[key] = json.loads(value) if _encoded(dim) else value
        elif dim.integer:
            params[key] = trial.suggest_int(key, dim.low, dim.high, step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
    return params


def _probes(dim: Dimension) -> list[Any]:
    """Values that show whether a key takes a range: both ends and one inside (off the integers, so that a
    float range over an integer key is refused before it is sampled)."""
    if dim.choices is not None:
        return list(dim.choices)
    if dim.integer:
        return [dim.low, dim.high]
    low, high = float(dim.low), float(dim.high)
    inside = math.sqrt(low * high) if dim.log else low + 0.382 * (high - low)
    return [low, high, inside]


def trial_config(config: CellConfig, params: dict[str, Any], checked: dict | None = None) -> CellConfig:
    """`config` with the sampled values set, validated as a suite's cell is; UserError(key=...) if refused."""
    tree = config.model_dump(mode="json")
    for key, value in params.items():
        set_dotted(tree, key, value)
    try:
        out = CellConfig.model_validate(tree)
    except ValidationError as e:
        raise validation_error(e, None, model=CellConfig) from None
    check_names(out, checked)
    return out


MONITOR = "train.monitor"  # a trial's is tune.metric: its best epoch, weights and result are the tuned figure's
# the contender's own train.monitor that a trial's may replace: the default, and those that pick the same epochs
ALIKE = {"val_error": ("val_error", "val_accuracy"), "val_loss": ("val_loss",)}


def trial_cell(contender: Cell, number: int, params: dict[str, Any], metric: str, checked: dict | None = None
               ) -> Cell:
    """The trial as a cell: the contender with the sampled values, monitoring the tuned metric (its id follows
    from its config and its contender's id: two trials of a contender with the same values share one cell)."""
    config = trial_config(contender.config, {**params, MONITOR: metric, "train.mode": "auto"}, checked)
    return dataclasses.replace(contender, config=config, label=f"{contender.label} trial {number}",
                               axes={**contender.axes, **params}, overrides={**contender.overrides, **params},
                               contender=contender.id)


def check_space(suite: Suite, contenders: list[Cell]) -> None:
    """Refuse, on one line naming the key, a [tune] table that no trial could run: a key the cells do not
    have, a range a key's type or bounds refuse for some contender (probed at both ends and inside), a grid
    with fewer points than trials, or staged cells."""
    tune = suite.tune
    if tune is None:
        return
    if any(c.parent or c.config.model.init_from for c in contenders):
        raise UserError("[tune] and model.init_from do not combine: a child would not know which trial of its "
                        "parent to start from", file=suite.path, key="tune",
                        hint="tune the parent in a suite of its own, then start from its chosen trial's weights "
                             "with model.pretrained = \"results/<suite>/<trial>/best.safetensors\"")
    if MONITOR in tune.space:
        raise UserError("a trial's train.monitor is tune.metric", file=suite.path, key=f'tune.space."{MONITOR}"',
                        hint='tune on val_loss with tune.metric = "val_loss"')
    default = TrainConfig.model_fields["monitor"].default
    for contender in contenders:
        monitor = contender.config.train.monitor
        if monitor not in (default, *ALIKE[tune.metric]):
            raise UserError(f"trials are judged on {tune.metric}, but train.monitor = \"{monitor}\" would pick "
                            "their best epochs", file=suite.path, key="tune.metric",
                            hint="drop train.monitor: a trial picks its best epoch by tune.metric")
    checked: dict = {}
    for key, dim in tune.space.items():
        where = f'tune.space."{key}"'
        if dim.integer and dim.step is not None and not float(dim.step).is_integer():
            raise UserError(f"an integer range needs an integer step, not {dim.step}", file=suite.path, key=where)
        for value in _probes(dim):
            for contender in contenders:
                try:
                    trial_config(contender.config, {key: value}, checked)
                except UserError as e:
                    reason = e.reason if e.reason == "unknown key" else f"{e.reason} (value {value!r})"
                    raise UserError(reason, file=suite.path, key=where, hint=e.hint) from None
    if tune.sampler == "grid":
        points = math.prod(len(grid_points(d)) for d in tune.space.values())
        if tune.trials > points:
            raise UserError(f"the grid has {points} point(s), fewer than trials = {tune.trials}: the rest would "
                            "repeat them", file=suite.path, key="tune.trials", hint=f"set trials = {points}")
