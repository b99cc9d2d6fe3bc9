"""The suite schema: frozen pydantic models with the defaults in code, loading, and one-line errors.

A suite file only overrides these defaults. Every key a suite may set is a field of a model here, and its
`description=` is the one place its meaning is written: the docs' key reference is generated from the fields
(bench.reference). The package is pure data: it imports neither torch nor any
registry, so reading a suite is instant. Names checked against a registry (architectures, optimizers,
augmentations, ...) are validated in one pass after parsing, by bench.suite, before anything trains.
"""

from bench.config.base import Strict
from bench.config.data import DataConfig, SyntheticConfig
from bench.config.load import check_datasets, check_grid, flatten, load_suite, validation_error
from bench.config.model import FREEZE_MODES, FREEZE_PATTERN, ModelConfig
from bench.config.suite import SECTIONS, CellConfig, Dimension, Resources, Suite, SuiteMeta, Tune
from bench.config.train import OfflineCopy, TrainConfig

__all__ = [
    "FREEZE_MODES", "FREEZE_PATTERN", "SECTIONS", "CellConfig", "DataConfig", "Dimension", "ModelConfig", "OfflineCopy",
    "Resources", "Strict", "Suite", "SuiteMeta", "SyntheticConfig", "TrainConfig", "Tune", "check_datasets",
    "check_grid", "flatten", "load_suite", "validation_error",
]
