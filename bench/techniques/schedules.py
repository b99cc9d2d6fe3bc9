"""Learning-rate schedules: name -> function(train_config, steps_per_epoch, total_steps) -> multiplier(step).

Every schedule is a multiplier of each parameter group's initial lr, applied by one torch LambdaLR stepped
after every batch (`BatchSchedule`). That one mechanism is why backbone_lr and layer_decay groups simply
scale with any schedule, why linear warmup (`with_warmup`) can multiply any of them, and why a schedule is
smooth within an epoch whatever the batch count. Settings given in epochs are converted to steps here.

Where each curve comes from, so that nothing timm or torch maintains is written twice:
- restarts (SGDR) and poly are timm's CosineLRScheduler and PolyLRScheduler themselves, read at each step
  from a probe optimizer holding lr 1 (`_timm_curve`, through timm's public `step_update`). timm's scheduler
  objects are not used on the real optimizer because they set each group's lr outright (their warmup
  replaces the schedule's start rather than multiplying it) and are stepped with explicit counts; through
  the probe they plug into the same LambdaLR as everything else.
- cosine keeps bench's one-line multiplier: it is timm's one-cycle cosine, but timm computes pi * t / T where
  bench computes pi * (t / T), one ulp apart at some steps, and bench's cosine keeps its exact numbers.
  Tests check it against timm's (with cooldown) to float tolerance, and against its earlier self bit for bit.
- plateau is torch's ReduceLROnPlateau (what timm's deprecated PlateauLRScheduler wraps) on such a probe,
  told the monitored validation figure once per epoch by fit (`BatchSchedule.epoch_end`).
- constant, step and multistep stay one-line multipliers. step is the same function of the step as timm's
  StepLRScheduler per update; multistep is torch's MultiStepLR at epoch milestones (timm's
  MultiStepLRScheduler decays one update early: it bisects at t + 1). Tests compare both.
- onecycle and cyclical are not in timm. torch's OneCycleLR and CyclicLR count their own steps (state), so
  they are written here as functions of the step and tested against torch's at every step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch

from bench.directions import maximises, monitored
from bench.registry import register

SCHEDULES: dict = {}


def _cos(start: float, end: float, fraction: float) -> float:
    """Half a cosine from start (fraction 0) to end (fraction 1), as torch's OneCycleLR and CosineAnnealingLR."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def _probe() -> torch.optim.Optimizer:
    """A one-tensor optimizer at lr 1: a scheduler driving it reports its multiplier as the probe's lr."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def _timm_curve(scheduler_class: type, **kwargs: Any) -> Callable[[int], float]:
    """timm's per-update scheduler as a multiplier of the step."""
    probe = _probe()
    scheduler = scheduler_class(probe, t_in_epochs=False, **kwargs)
    last: list[Any] = [None, 1.0]  # LambdaLR asks once per group for the same step: compute it once

    def multiplier(s: int) -> float:
        if s != last[0]:
            scheduler.step_update(s)
            last[:] = [s, probe.param_groups[0]["lr"]]
        return last[1]

    return multiplier


def _ending(cfg, steps_per_epoch: int, total_steps: int) -> tuple[int, float]:
    """(steps the schedule spans, its floor): cooldown_epochs at min_lr follow the span, as in timm."""
    cooldown = round(cfg.cooldown_epochs * steps_per_epoch)
    return max(1, total_steps - cooldown), cfg.min_lr / cfg.lr


def _then_cooldown(curve: Callable[[int], float], span: int, floor: float) -> Callable[[int], float]:
    return lambda s: curve(s) if s < span else floor  # a cut-off cycle does not run on into the cooldown


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
    """Half a cosine from lr to min_lr over the run, less cooldown_epochs at min_lr (timm's cosine)."""
    span, floor = _ending(cfg, steps_per_epoch, total_steps)
    return lambda s: _cos(1.0, floor, s / span)  # past the span the fraction clamps at 1: the cooldown


@register(SCHEDULES, "restarts")
def restarts(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """SGDR (Loshchilov & Hutter): cosine from lr to min_lr over cycle_epochs, then again from the top; each
    cycle restart_mult times longer and its peak restart_decay times lower (timm's cycle_mul, cycle_decay).
    The run's length is `epochs`: a cycle that does not fit is cut off, then cooldown_epochs at min_lr."""
    from timm.scheduler import CosineLRScheduler

    span, floor = _ending(cfg, steps_per_epoch, total_steps)
    cycle = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    curve = _timm_curve(CosineLRScheduler, t_initial=cycle, lr_min=floor, cycle_mul=cfg.restart_mult,
                        cycle_decay=cfg.restart_decay, cycle_limit=span)  # every cycle begun in the span
    return _then_cooldown(curve, span, floor)


@register(SCHEDULES, "poly")
def poly(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Polynomial decay from lr to min_lr, (1 - t/T)^poly_power, over the run less cooldown: timm's poly."""
    from timm.scheduler import PolyLRScheduler

    span, floor = _ending(cfg, steps_per_epoch, total_steps)
    curve = _timm_curve(PolyLRScheduler, t_initial=span, power=cfg.poly_power, lr_min=floor)
    return _then_cooldown(curve, span, floor)


class Plateau:
    """Reduce on plateau: torch's ReduceLROnPlateau on a probe, told the monitored validation figure after
    every epoch, with early stopping's notion of improvement (monitor, mode, min_delta as an absolute
    threshold) and its count: the lr is multiplied by gamma after plateau_patience epochs without one, as
    Keras' ReduceLROnPlateau and train.patience count (torch's patience p waits p + 1 epochs). min_lr is
    its floor."""

    def __init__(self, cfg):
        self.monitor = cfg.monitor
        self.probe = _probe()
        self.reduce = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.probe, mode="max" if maximises(cfg.monitor, cfg.mode) else "min", factor=cfg.gamma,
            patience=cfg.plateau_patience - 1, threshold=cfg.min_delta, threshold_mode="abs",
            min_lr=cfg.min_lr / cfg.lr)

    def __call__(self, s: int) -> float:
        return self.probe.param_groups[0]["lr"]

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.reduce.step(monitored(row, self.monitor))

    def state_dict(self) -> dict[str, Any]:
        return {"reduce": self.reduce.state_dict(), "lr": self.probe.param_groups[0]["lr"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reduce.load_state_dict(state["reduce"])
        self.probe.param_groups[0]["lr"] = state["lr"]


@register(SCHEDULES, "plateau")
def plateau(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    return Plateau(cfg)


@register(SCHEDULES, "onecycle")
def onecycle(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Smith's one-cycle as torch's OneCycleLR (lr only, its cycle_momentum aside): cosine from lr/25 at
    step 0 up to lr at step pct_start * total - 1, then down to lr/25e4 at the last step, total - 1."""
    peak = max(1.0, cfg.pct_start * total_steps - 1)  # below 1 torch divides by zero; bench rises in a step
    last = max(peak + 1.0, total_steps - 1.0)
    start, end = 1 / 25, 1 / 25e4

    def multiplier(s: int) -> float:
        if s <= peak:
            return _cos(start, 1.0, s / peak)
        return _cos(1.0, end, (s - peak) / (last - peak))

    return multiplier


@register(SCHEDULES, "cyclical")
def cyclical(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Smith's cyclical learning rate, as torch's CyclicLR: a triangle from min_lr up to lr and back every
    cycle_epochs; cycle_mode "triangular2" halves the amplitude after every cycle (study 002 lowered its
    range by hand)."""
    cycle = max(2, round(cfg.cycle_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr

    def multiplier(s: int) -> float:
        n, pos = divmod(s, cycle)
        height = 1.0 - abs(2.0 * pos / cycle - 1.0)  # 0 at the cycle's ends, 1 in its middle
        amplitude = (1.0 - floor) * (0.5 ** n if cfg.cycle_mode == "triangular2" else 1.0)
        return floor + amplitude * height

    return multiplier


def with_warmup(multiplier: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup over the first warmup_steps (lr/W at the first step, full at step W) times the schedule."""
    if warmup_steps <= 0:
        return multiplier
    return lambda s: multiplier(s) * min(1.0, (s + 1) / warmup_steps)


class BatchSchedule(torch.optim.lr_scheduler.LambdaLR):
    """torch's LambdaLR applying a schedule's multiplier (times warmup) to every group, stepped after every
    batch; `epoch_end(row)` hands a metric-driven schedule (plateau) the epoch's validation figures."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                 warmup_steps: int = 0):
        self.schedule = schedule
        super().__init__(optimizer, with_warmup(schedule, warmup_steps))

    def state_dict(self) -> dict[str, Any]:
        """LambdaLR's state, and a stateful schedule's own (plateau's reductions so far), for checkpoints."""
        state = super().state_dict()
        # the schedule is a function of the step, rebuilt from the config; only plateau has state of its own
        state.pop("schedule", None)
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        if hasattr(self.schedule, "state_dict"):
            state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        schedule = state.pop("schedule", None)
        super().load_state_dict(state)
        if schedule is not None:
            self.schedule.load_state_dict(schedule)

    def epoch_end(self, row: dict[str, Any]) -> None:
        hook = getattr(self.schedule, "epoch_end", None)
        if hook is None:
            return
        hook(row)
        # the last step() set the next batch's lr before the schedule heard of this epoch: set it again
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas, strict=True):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
