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

    data: DataConfig = Field(DataConfig(), description="`[data]`: where the images come from, how they are "
                             "curated, split and sized")
    model: ModelConfig = Field(ModelConfig(), description="`[model]`: the architecture, its starting weights, the "
                               "classifier head and what trains")
    train: TrainConfig = Field(TrainConfig(), description="`[train]`: how the cell trains")
    seed: int = Field(0, description="the seed of this run of the cell, one of `suite.seeds`: it drives the "
                      "split, the initial weights, shuffling and augmentation")


class SuiteMeta(Strict):
    """`[suite]`: the suite's name, what it asks, and its seeds."""

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, `_ . -`; names the results folder, "
                      "`results/<name>/`")
    description: str = Field("", description="what the suite asks, shown by `bench plan`")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="one run of every cell per "
                             "seed (reports show mean ± std (n)); the seed drives the split, the initial weights, "
                             "shuffling and augmentation")


class Resources(Strict):
    """What one cell asks of an executor (`[resources]`): never part of a cell's id, since where a cell runs
    does not change what it computes. Unset values take each executor's default (see the docs' *Long runs and
    running at scale* page); the Slurm keys are ignored by the other executors."""
    gpus: float | None = Field(None, ge=0, description="GPUs per cell; 2 or more train the cell as that many "
                               "ranks of torch.distributed (DDP over NCCL, one process per GPU, "
                               "`train.batch_size` the global batch) on every executor; fractions below 1 share a "
                               "GPU on Ray; unset: 1 where the machine or cluster has GPUs, else 0")
    processes: int | None = Field(None, ge=1, description="on the CPU, ranks per cell: the cell trains as that "
                                  "many processes of torch.distributed (DDP over gloo), `train.batch_size` the "
                                  "global batch; unset: 1")
    cpus: float | None = Field(None, gt=0, description="CPUs per cell (Ray's `num_cpus`, Slurm's "
                               "`--cpus-per-task`, rounded down); on the CPU also torch's threads per cell; "
                               "unset: an even share of the cores among the jobs")
    memory_gb: float | None = Field(None, gt=0, description="memory per cell in GB (Ray's `memory`, Slurm's "
                                    "`--mem`); unset: the executor's default")
    partition: str | None = Field(None, description="Slurm's `--partition` (or `bench run --partition`); unset: "
                                  "the cluster's default")
    account: str | None = Field(None, description="Slurm's `--account` (or `bench run --account`); unset: the "
                                "cluster's default")
    time_min: int | None = Field(None, gt=0, description="Slurm's `--time` per cell, in minutes (or `bench run "
                                 "--time-min`); a cell whose job times out or is preempted is requeued and resumes "
                                 "from its last epoch; unset: the cluster's default")
    array_parallelism: int | None = Field(None, gt=0, description="at most this many array jobs at once (Slurm's "
                                          "`--array=…%N`); unset: `--jobs` when it is above 1, else no limit")
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict, description="any other sbatch "
                                                        'option, e.g. `{qos = "high", constraint = "a100"}` (or '
                                                        "`bench run --sbatch qos=high`, repeatable)")


    @field_validator("gpus")
    @classmethod
    def _whole_gpus_for_ranks(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and v != int(v):
            raise ValueError(f"{v} GPUs: above 1, a cell's GPUs are its ranks, a whole number (e.g. 2)")
        return v

    def ranks(self, device: str) -> int:
        """Processes one cell trains as (bench.distributed): `gpus` on CUDA, `processes` on the CPU."""
        if device == "cuda":
            return max(1, int(self.gpus or 1))
        return self.processes or 1


class Log(Strict):
    """Trackers a suite's cells are also sent to (`[log]`): never part of a cell's id, since where results are
    shown does not change them. The results folder stays the source of truth (bench.trackers; see the docs'
    *Trackers* page)."""
    mlflow: bool | str = Field(False, description="`true`: every cell a run in MLflow's SQLite store "
                               "`results/mlflow.db` (or `MLFLOW_TRACKING_URI` when set); a string: that tracking "
                               "URI")
    tensorboard: bool | str = Field(False, description="`true`: event files under `results/tensorboard/<suite>/`; "
                                    "a string: that folder")
    wandb: Literal["online", "offline"] | None = Field(
        None, description="a W&B run per cell, `online`, or `offline` (run files under `results/wandb/`, "
        "`wandb sync` later); unset: no W&B")
    project: str | None = Field(None, description="the W&B project; unset: the suite's name")
    entity: str | None = Field(None, description="the W&B team or user; unset: W&B's default")
    predictions: bool = Field(False, description="also send each cell's `predictions.npz` as an artefact "
                              "(MLflow, W&B)")

    @field_validator("mlflow", "tensorboard")
    @classmethod
    def _not_empty(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("give a URI or folder, or true for the default")
        return value


class Dimension(Strict):
    """One tuned key's range: `{low, high[, log, step]}` (floats, or ints when both ends are ints) or
    `{choices = [...]}`, as Optuna's suggest_float / suggest_int / suggest_categorical take them."""
    low: float | int | None = Field(None, description="the range's lower end (with `high`; integers when both "
                                    "ends are)")
    high: float | int | None = Field(None, description="the range's upper end, above `low`")
    log: bool = Field(False, description="sample log-uniformly (learning rates, weight decays); needs `low` > 0, "
                      "exclusive with `step`")
    step: float | int | None = Field(None, gt=0, description="a grid step between `low` and `high`; the grid "
                                     "sampler needs it (or `choices`) for every key")
    choices: list[Any] | None = Field(None, min_length=1, description="the values to choose from, instead of a "
                                      "range")

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
    trials each, chosen on validation only (see the docs' *Tuning* page)."""
    space: dict[str, Dimension] = Field(min_length=1, description="dotted `train.*`/`model.*` keys → their range, "
                                        "e.g. `{\"train.lr\" = {low = 1e-4, high = 1e-1, log = true}}`; a key, "
                                        "range or choice that a contender's config refuses is one line naming the "
                                        "key, before anything runs")
    trials: int = Field(ge=1, description="the budget: trials per contender, the same for every one (the grid "
                        "sampler: at most as many as grid points); raising it later adds exactly the difference")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna's sampler: `tpe` (TPESampler), `random` (RandomSampler), `grid` (GridSampler, "
        "which needs `choices` or a `step` for every key)")
    startup_trials: int | None = Field(None, ge=1, description="`tpe`: random trials before TPE models; unset: "
                                       "Optuna's 10")
    pruner: Literal["none", "median", "halving"] = Field(
        "none", description="stop hopeless trials after an epoch (Optuna's MedianPruner, SuccessiveHalvingPruner); "
        "a pruned trial is recorded as `pruned`, final like `diverged`")
    warmup_epochs: int = Field(1, ge=0, description="`median`: epochs a trial runs before it may be pruned")
    pruner_startup_trials: int = Field(5, ge=0, description="`median`: finished trials before any trial is pruned "
                                       "(Optuna's default)")
    metric: Literal["val_error", "val_loss"] = Field(
        "val_error", description="what trials are judged on, per epoch and at the end; it is also each trial's "
        "`train.monitor` (with `val_loss`, each trial keeps, and is judged and, if chosen, tested on, its epoch "
        "of lowest validation loss)")
    seed: int = Field(0, description="with the contender's id and the trial number, seeds each trial's draw: a "
                      "rerun or resumed run proposes the same values")

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
    """A parsed suite file: its tables as written, before expansion into cells (bench.suite.expand)."""

    path: Path = Field(description="the suite file")
    suite: SuiteMeta = Field(description="`[suite]`: name, description, seeds")
    base: dict[str, Any] = Field(description="the `[data]`, `[model]` and `[train]` tables as written: every "
                                 "cell's defaults")
    grid: dict[str, list[Any]] = Field(description="`[grid]`: dotted keys → values; the cells are their cartesian "
                                       'product, e.g. `"model.arch" = ["tv:alexnet", "tv:resnet50"]` (keys may be '
                                       "quoted or not)")
    cells: list[dict[str, Any]] = Field(description="`[[cells]]`: optional explicit cells, each an optional "
                                        "`label` and dotted keys, each crossed with the grid")
    resources: Resources = Field(default_factory=Resources, description="`[resources]`: what one cell asks of an "
                                 "executor")
    log: Log = Field(default_factory=Log, description="`[log]`: trackers the cells are also sent to")
    tune: Tune | None = Field(None, description="`[tune]`: the same hyperparameter search for every cell; unset: "
                              "no tuning")
    datasets: list[dict[str, Any]] = Field(default_factory=list, description="`[[datasets]]`: each a `name` and "
                                           "`data.*` keys relative to `[data]` (dotted or nested), which they "
                                           "override; every cell runs on every entry, as the axis `dataset`")
