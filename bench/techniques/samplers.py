"""Samplers: name -> function(labels, seed) -> torch Sampler, or None for a plain seeded shuffle.

The re-weighting samplers draw len(labels) indices per epoch with replacement (as
torch.utils.data.WeightedRandomSampler does), from a generator seeded by the cell seed.
"""

from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler

from bench.registry import register

SAMPLERS: dict = {}


def _by_class(labels: torch.Tensor, seed: int, power: float) -> WeightedRandomSampler:
    """Class c is drawn with probability proportional to n_c ** power (0: balanced, 0.5: square root)."""
    counts = torch.bincount(labels).double()
    per_sample = counts[labels].pow(power - 1)  # n_c samples of weight n_c^(p-1) sum to n_c^p
    return WeightedRandomSampler(per_sample, len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


@register(SAMPLERS, "uniform")
def uniform(labels: torch.Tensor, seed: int):
    """Every image once per epoch, shuffled (the loader's own seeded shuffle)."""
    return None


@register(SAMPLERS, "balanced")
def balanced(labels: torch.Tensor, seed: int):
    """Class-balanced sampling (study 003): every class equally likely."""
    return _by_class(labels, seed, 0.0)


@register(SAMPLERS, "sqrt")
def sqrt(labels: torch.Tensor, seed: int):
    """Square-root frequency: class c drawn in proportion to sqrt(n_c), between uniform and balanced."""
    return _by_class(labels, seed, 0.5)
