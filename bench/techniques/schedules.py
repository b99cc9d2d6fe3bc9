"""Learning-rate schedules: name -> function(train_config, steps_per_epoch, total_steps) -> multiplier(step).

The multiplier is applied by torch's LambdaLR, stepped after every batch, so schedules are smooth
within an epoch and independent of how many batches an epoch has.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.registry import register

SCHEDULES: dict = {}


@register(SCHEDULES, "constant")
def constant(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    return lambda step: 1.0


@register(SCHEDULES, "step")
def step(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiply by gamma every step_size epochs."""
    return lambda s: cfg.gamma ** ((s // steps_per_epoch) // cfg.step_size)


@register(SCHEDULES, "cosine")
def cosine(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Half a cosine from lr to 0 over the whole run."""
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
