"""Metrics computed from saved logits, each with its direction, so reports sort and bold correctly.

`classification_metrics` is what the training loop calls on validation every epoch: keep it cheap.
`full_metrics` adds the threshold-free and class-balanced scalars a report shows for the final model;
both only need (logits, labels), so a report can recompute them from predictions.npz at any time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from bench.errors import UserError

# metric -> True when higher is better; report columns sort and bold by their own direction
HIGHER_IS_BETTER = {
    "top1_error": False, "top5_error": False, "loss": False,
    "f1_macro": True, "f1_weighted": True, "auc_macro": True, "map": True,
    "train_time_s": False, "time_per_epoch_s": False, "peak_rss_mb": False, "peak_cuda_mb": False,
    "train_images_per_s": True, "eval_images_per_s": True, "params_total": False, "params_trainable": False,
    "gflops_forward": False, "gflops_per_s": True, "time_to_target_s": False,
}


def monitored(row: dict, monitor: str) -> float:
    """The figure train.monitor names in an epoch's history row (val_accuracy is 1 - val_error)."""
    return 1 - row["val_error"] if monitor == "val_accuracy" else row[monitor]


def maximises(monitor: str, mode: str) -> bool:
    """Whether higher is better for train.monitor under train.mode ("auto": only val_accuracy)."""
    return mode == "max" or (mode == "auto" and monitor == "val_accuracy")


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (top-k capped at the class count) and mean cross-entropy."""
    logits, labels = logits.float(), labels.long()
    n = logits.shape[1]
    out = {"loss": float(F.cross_entropy(logits, labels))}
    for k in (1, 5):
        acc = multiclass_accuracy(logits, labels, num_classes=n, top_k=min(k, n), average="micro")
        out[f"top{k}_error"] = 1.0 - float(acc)
    return out


def _present_mean(per_class: torch.Tensor, labels: torch.Tensor) -> float:
    # A class with no test image has no ROC or PR curve; torchmetrics scores it 0 (AUC) or nan (AP),
    # which would drag the mean down for a class the model was never asked about, so average the others.
    present = torch.bincount(labels, minlength=per_class.numel()) > 0
    values = per_class[present]
    return float(values.nanmean()) if values.numel() else float("nan")


def full_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """classification_metrics plus macro and weighted F1, macro one-vs-rest ROC AUC and mean average
    precision (macro over the classes present in `labels`)."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    n = logits.shape[1]
    out = classification_metrics(logits, labels)
    for average in ("macro", "weighted"):
        out[f"f1_{average}"] = float(multiclass_f1_score(logits, labels, num_classes=n, average=average))
    probs = logits.softmax(1)
    with warnings.catch_warnings():  # "no positive samples" for absent classes: _present_mean leaves them out
        warnings.filterwarnings("ignore", message="No positive samples")
        auc = multiclass_auroc(probs, labels, num_classes=n, average="none")
        ap = multiclass_average_precision(probs, labels, num_classes=n, average="none")
    out["auc_macro"], out["map"] = _present_mean(auc, labels), _present_mean(ap, labels)
    return out


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (recall) of each class; nan for a class with no image in `labels`."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    n = logits.shape[1]
    acc = multiclass_accuracy(logits, labels, num_classes=n, average="none")
    return torch.where(torch.bincount(labels, minlength=n) > 0, acc, torch.tensor(float("nan")))


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    return multiclass_confusion_matrix(logits, labels, num_classes=logits.shape[1])


def load_predictions(cell_dir: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of one split from a cell's predictions.npz."""
    path = Path(cell_dir) / "predictions.npz"
    if not path.is_file():
        raise UserError(f"no predictions.npz in '{cell_dir}'", hint="only finished cells have predictions")
    with np.load(path) as npz:
        if f"{split}_logits" not in npz:
            have = sorted(k.removesuffix("_logits") for k in npz.files if k.endswith("_logits"))
            raise UserError(f"'{path}' has no '{split}' predictions", hint=f"splits saved: {', '.join(have)}")
        return torch.from_numpy(npz[f"{split}_logits"]), torch.from_numpy(npz[f"{split}_labels"])
