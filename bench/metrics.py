"""Metrics computed from saved logits, each with its direction, so reports sort and bold correctly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

# metric -> True when higher is better; report columns sort by their own direction
HIGHER_IS_BETTER = {
    "top1_error": False, "top5_error": False, "loss": False,
    "train_time_s": False, "time_per_epoch_s": False, "peak_rss_mb": False, "peak_cuda_mb": False,
    "train_images_per_s": True, "eval_images_per_s": True, "params_total": False, "params_trainable": False,
}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (top-k capped at the class count) and mean cross-entropy."""
    logits, labels = logits.float(), labels.long()
    n = logits.shape[1]
    out = {"loss": float(F.cross_entropy(logits, labels))}
    for k in (1, 5):
        acc = multiclass_accuracy(logits, labels, num_classes=n, top_k=min(k, n), average="micro")
        out[f"top{k}_error"] = 1.0 - float(acc)
    return out
