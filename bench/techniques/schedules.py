"""Learning-rate schedules: name -> function(train_config, steps_per_epoch, total_steps) -> multiplier(step).

The multiplier is applied by torch's LambdaLR, stepped after every batch, so schedules are smooth
within an epoch and independent of how many batches an epoch has. Settings given in epochs
(step_size, milestones, cycle_epochs, warmup_epochs) are converted to steps here. Linear warmup
(`with_warmup`) multiplies any of them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from bench.registry import register

SCHEDULES: dict = {}


def _cos(start: float, end: float, fraction: float) -> float:
    """Half a cosine from start (fraction 0) to end (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


@register(SCHEDULES, "constant")
def constant(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    return lambda step: 1.0


@register(SCHEDULES, "step")
def step(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiply by gamma every step_size epochs."""
    return lambda s: cfg.gamma ** ((s // steps_per_epoch) // cfg.step_size)


@register(SCHEDULES, "multistep")
def multistep(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiply by gamma at each of the epochs in `milestones`."""
    milestones = sorted(cfg.milestones)
    return lambda s: cfg.gamma ** bisect.bisect_right(milestones, s // steps_per_epoch)


@register(SCHEDULES, "cosine")
def cosine(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Half a cosine from lr to min_lr over the whole run."""
    floor = cfg.min_lr / cfg.lr
    return lambda s: _cos(1.0, floor, s / total_steps)


@register(SCHEDULES, "onecycle")
def onecycle(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Smith's one-cycle as torch's OneCycleLR: cosine from lr/25 up to lr over pct_start of the run,
    then down to lr/25e4."""
    up = max(1.0, cfg.pct_start * total_steps)
    start, end = 1 / 25, 1 / 25e4

    def multiplier(s: int) -> float:
        if s < up:
            return _cos(start, 1.0, s / up)
        return _cos(1.0, end, (s - up) / max(1.0, total_steps - up))

    return multiplier


@register(SCHEDULES, "cyclical")
def cyclical(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Smith's cyclical learning rate: a triangle from min_lr up to lr and back every cycle_epochs;
    cycle_mode "triangular2" halves the amplitude after every cycle (study 002 lowered its range by hand)."""
    cycle = max(2, round(cfg.cycle_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr

    def multiplier(s: int) -> float:
        n, pos = divmod(s, cycle)
        height = 1.0 - abs(2.0 * pos / cycle - 1.0)  # 0 at the cycle's ends, 1 in its middle
        amplitude = (1.0 - floor) * (0.5 ** n if cfg.cycle_mode == "triangular2" else 1.0)
        return floor + amplitude * height

    return multiplier


def with_warmup(multiplier: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup over the first warmup_steps (lr/W at the first step, full at step W), times the schedule."""
    if warmup_steps <= 0:
        return multiplier
    return lambda s: multiplier(s) * min(1.0, (s + 1) / warmup_steps)
