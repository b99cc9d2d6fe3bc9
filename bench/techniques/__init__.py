"""Training techniques as small functions in plain-dict registries; a suite names them by key.

Each registry maps the name a suite writes (train.optimizer = "adamw") to the function that builds it.
Add a technique by decorating a function with `@register(REGISTRY, "name")`; validation, `bench plan`
and the parametrized tests pick it up from the registry.
"""

from bench.techniques.augment import AUGMENTS
from bench.techniques.optimizers import OPTIMIZERS
from bench.techniques.schedules import SCHEDULES

# train.<field> -> registry of valid names
REGISTRIES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS}
