"""Losses: name -> function(train_config, class_counts) -> loss(logits, target).

`target` is either class indices (int64, N) or a distribution over classes (float, N x K, what
CutMix/MixUp produce); every loss accepts both but jsd, whose batches are never mixed (train.aug_splits
excludes train.mix). Label smoothing applies to all of them, the torch way
(target = (1 - eps) * target + eps / K). Every loss is a mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy

from bench.registry import register

LOSSES: dict = {}


def as_probs(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    probs = F.one_hot(target, num_classes).float() if target.dtype == torch.long else target.float()
    return probs * (1 - smoothing) + smoothing / num_classes if smoothing else probs


def class_weights(counts: Sequence[int], scheme: str, beta: float = 0.999) -> torch.Tensor:
    """Per-class weights from training frequencies, scaled to sum to the number of classes.

    inverse: 1/n; sqrt_inverse: 1/sqrt(n); effective: (1 - beta) / (1 - beta^n), the "effective number
    of samples" of Cui et al. (CVPR 2019). Classes with no training image get the largest weight.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    if scheme == "inverse":
        w = 1 / n
    elif scheme == "sqrt_inverse":
        w = n.rsqrt()
    elif scheme == "effective":
        w = (1 - beta) / (1 - beta ** n)
    else:
        raise ValueError(f"unknown class weighting '{scheme}'")
    return (w * len(w) / w.sum()).float()


@register(LOSSES, "ce")
def ce(cfg, counts) -> Callable:
    return lambda logits, t: F.cross_entropy(logits, t, label_smoothing=cfg.label_smoothing)


@register(LOSSES, "weighted_ce")
def weighted_ce(cfg, counts) -> Callable:
    """Cross-entropy with each sample's loss times its class's weight (train.class_weights); mean over
    samples, as Keras' class_weight (study 002), not torch's weighted mean, so soft targets agree."""
    w = class_weights(counts, cfg.class_weights, cfg.effective_beta)

    def loss(logits, t):
        probs = as_probs(t, logits.shape[1], cfg.label_smoothing)
        return -(probs * w.to(logits.device) * F.log_softmax(logits, 1)).sum(1).mean()

    return loss


def focal_loss(logits: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """Categorical focal loss (Lin et al. 2017): -sum_c alpha t_c (1 - p_c)^gamma log p_c.
    gamma 0 and alpha None is cross-entropy."""
    logp = F.log_softmax(logits, 1)
    probs = as_probs(t, logits.shape[1], smoothing)
    per_class = probs * logp if gamma == 0 else probs * (1 - logp.exp()).pow(gamma) * logp
    return -(per_class.sum(1).mean() * (1.0 if alpha is None else alpha))


@register(LOSSES, "focal")
def focal(cfg, counts) -> Callable:
    return lambda logits, t: focal_loss(logits, t, cfg.focal_gamma, cfg.focal_alpha, cfg.label_smoothing)


def complement_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Complement entropy term of Chen et al., "Complement Objective Training" (ICLR 2019), normalised as
    their reference code: (1/(N K)) sum_i sum_{j != y_i} q_ij log q_ij with q_ij = p_ij / (1 - p_iy).
    This is the *negative* entropy of the non-target classes: minimising it flattens them."""
    if y.dtype != torch.long:  # a mixed target: its largest class stands for the ground truth
        y = y.argmax(1)
    n, k = logits.shape
    p = F.softmax(logits.float(), 1)
    p_true = p.gather(1, y[:, None])
    q = p / (1 - p_true + 1e-7)
    mask = torch.ones_like(p).scatter_(1, y[:, None], 0.0)
    return (q * torch.log(q + 1e-10) * mask).sum() / (n * k)


@register(LOSSES, "complement")
def complement(cfg, counts) -> Callable:
    """Cross-entropy plus complement_weight x the complement entropy term, in one step: the "added"
    form of COT (the paper alternates two optimizer steps per batch; adding keeps one training loop)."""
    def loss(logits, t):
        return (F.cross_entropy(logits, t, label_smoothing=cfg.label_smoothing)
                + cfg.complement_weight * complement_entropy(logits, t))

    return loss


@register(LOSSES, "bce")
def bce(cfg, counts) -> Callable:
    """timm's BinaryCrossEntropy: a sigmoid per class against the (smoothed, mixed) one-hot target, as the
    ResNet strikes-back recipes train; bce_target_threshold turns a soft target into 0/1 first."""
    pos_weight = None if cfg.bce_pos_weight is None else torch.tensor(cfg.bce_pos_weight)
    loss = BinaryCrossEntropy(smoothing=0.0, target_threshold=cfg.bce_target_threshold, pos_weight=pos_weight,
                              sum_classes=cfg.bce_sum)

    def fn(logits, t):
        if pos_weight is not None and loss.pos_weight.device != logits.device:
            loss.to(logits.device)
        return loss(logits, as_probs(t, logits.shape[1], cfg.label_smoothing))

    return fn


@register(LOSSES, "jsd")
def jsd(cfg, counts) -> Callable:
    """timm's JsdCrossEntropy (AugMix, Hendrycks et al. 2020): cross-entropy on the clean images plus
    jsd_alpha x the Jensen-Shannon divergence among the clean and augmented views of each image, which
    train.aug_splits puts in the batch."""
    return JsdCrossEntropy(num_splits=cfg.aug_splits, alpha=cfg.jsd_alpha, smoothing=cfg.label_smoothing)
