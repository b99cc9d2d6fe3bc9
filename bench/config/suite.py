"""The suite file's shape: a cell's config, `[suite]`, `[resources]`, `[log]`, `[tune]`, and the parsed Suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bench.config.base import NAME_PATTERN, Strict
from bench.config.data import DataConfig
from bench.config.model import ModelConfig
from bench.config.train import TrainConfig


class CellConfig(Strict):
    """Everything that decides a cell's numbers; its hash is the cell id."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0


class SuiteMeta(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class Resources(Strict):
    """What one cell asks of an executor (`[resources]`): never part of a cell's id, since where a cell runs
    does not change what it computes. Unset values take each executor's default (see README, "Running at
    scale"); the Slurm keys are ignored by the other executors."""
    gpus: float | None = Field(None, ge=0)  # per cell; default 1 where the machine or cluster has GPUs, else 0
    cpus: float | None = Field(None, gt=0)  # per cell; default an even share of the cores among the jobs
    memory_gb: float | None = Field(None, gt=0)  # per cell (Ray's memory, Slurm's --mem)
    partition: str | None = None  # Slurm --partition
    account: str | None = None  # Slurm --account
    time_min: int | None = Field(None, gt=0)  # Slurm --time, in minutes; a timed-out cell resumes when requeued
    array_parallelism: int | None = Field(None, gt=0)  # at most this many array jobs at once (Slurm's %N)
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)  # any other sbatch option


class Log(Strict):
    """Trackers a suite's cells are also sent to (`[log]`): never part of a cell's id, since where results are
    shown does not change them. The results folder stays the source of truth (bench.trackers)."""
    # true: the SQLite store results/mlflow.db (MLFLOW_TRACKING_URI when set); a string: a tracking URI
    mlflow: bool | str = False
    tensorboard: bool | str = False  # true: event files under results/tensorboard/; a string: that folder
    wandb: Literal["online", "offline"] | None = None  # offline: run files under results/wandb/, `wandb sync` later
    project: str | None = None  # the W&B project; default the suite's name
    entity: str | None = None  # the W&B team or user; default W&B's own
    predictions: bool = False  # also send each cell's predictions.npz as an artefact (MLflow, W&B)

    @field_validator("mlflow", "tensorboard")
    @classmethod
    def _not_empty(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("give a URI or folder, or true for the default")
        return value


class Dimension(Strict):
    """One tuned key's range: `{low, high[, log, step]}` (floats, or ints when both ends are ints) or
    `{choices = [...]}`, as Optuna's suggest_float / suggest_int / suggest_categorical take them."""
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False  # sample log-uniformly (learning rates, weight decays)
    step: float | int | None = Field(None, gt=0)  # a grid step between low and high
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices = [...] or low/high (with log, step), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (e.g. {low = 1e-4, high = 1e-1, log = true}) or choices = [...]")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step are exclusive (Optuna refuses a stepped log range)")
        return self

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high))


class Tune(Strict):
    """`[tune]`: every cell of the suite is a contender that gets the same search over `space`, `trials`
    trials each, chosen on validation only (see README, "Tuning")."""
    space: dict[str, Dimension] = Field(min_length=1)  # dotted train.* / model.* keys -> their range
    trials: int = Field(ge=1)  # the budget: trials per contender, the same for every one
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # Optuna's TPESampler, RandomSampler, GridSampler
    startup_trials: int | None = Field(None, ge=1)  # tpe: random trials before TPE models; unset: Optuna's 10
    pruner: Literal["none", "median", "halving"] = "none"  # stop hopeless trials after an epoch (Optuna's)
    warmup_epochs: int = Field(1, ge=0)  # median: epochs a trial runs before it may be pruned
    pruner_startup_trials: int = Field(5, ge=0)  # median: finished trials before any is pruned (Optuna's 5)
    metric: Literal["val_error", "val_loss"] = "val_error"  # what a trial is judged on, per epoch and at the end
    seed: int = 0  # the sampler's seed (with the contender's id): the same proposals on a rerun

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, v: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in v:
            if key.split(".")[0] not in ("train", "model") or "." not in key:
                raise ValueError(f"'{key}' is not tunable: tune train.* or model.* keys, e.g. \"train.lr\"")
        return v

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> Tune:
        if self.sampler == "grid":
            for key, dim in self.space.items():
                if dim.choices is None and dim.step is None:
                    raise ValueError(f"sampler 'grid' needs choices (or a step) for every key; '{key}' has neither")
        return self


SECTIONS = ("data", "model", "train")


class Suite(Strict):
    path: Path
    suite: SuiteMeta
    base: dict[str, Any]  # the [data], [model], [train] tables as written
    grid: dict[str, list[Any]]
    cells: list[dict[str, Any]]
    resources: Resources = Field(default_factory=Resources)
    log: Log = Field(default_factory=Log)
    tune: Tune | None = None
    # [[datasets]]: name = "..." and data.* keys (relative to [data]) each; every cell runs on every one
    datasets: list[dict[str, Any]] = Field(default_factory=list)
