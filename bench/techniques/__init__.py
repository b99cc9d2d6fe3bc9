"""Training techniques as small functions in plain-dict registries; a suite names them by key.

Each registry maps the name a suite writes (train.optimizer = "adamw") to the function that builds it.
Add a technique by decorating a function with `@register(REGISTRY, "name")`; validation, `bench plan`
and the parametrized tests pick it up from the registry.
"""

from bench.techniques.augment import AUGMENT_OPS, AUGMENTS, build_augment
from bench.techniques.losses import LOSSES
from bench.techniques.mix import MIXES
from bench.techniques.optimizers import OPTIMIZERS
from bench.techniques.samplers import SAMPLERS
from bench.techniques.schedules import SCHEDULES
from bench.techniques.tta import TTA_VIEWS, build_tta

# train.<field> -> registry of valid names (train.augment and train.tta are lists of these; see their modules)
REGISTRIES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS, "loss": LOSSES,
              "sampler": SAMPLERS, "mix": MIXES, "tta": TTA_VIEWS}

__all__ = ["AUGMENTS", "AUGMENT_OPS", "LOSSES", "MIXES", "OPTIMIZERS", "REGISTRIES", "SAMPLERS", "SCHEDULES",
           "TTA_VIEWS", "build_augment", "build_tta"]
