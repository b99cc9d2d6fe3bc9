"""Metrics computed from logits (their directions: bench.directions).

`classification_metrics` is what the training loop calls on validation every epoch: keep it cheap.
`full_metrics` adds the threshold-free and class-balanced scalars a report shows for the final model;
both only need (logits, labels), so a report can recompute them from predictions.npz at any time.

torchmetrics is imported by the functions that use it: it pulls in torchvision and scipy (seconds), which
importing this module for load_predictions should not cost.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError
from bench.store import PREDICTIONS


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (top-k capped at the class count) and mean cross-entropy."""
    from torchmetrics.functional.classification import multiclass_accuracy

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
    from torchmetrics.functional.classification import (
        multiclass_auroc,
        multiclass_average_precision,
        multiclass_f1_score,
    )

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
    from torchmetrics.functional.classification import multiclass_accuracy

    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    n = logits.shape[1]
    acc = multiclass_accuracy(logits, labels, num_classes=n, average="none")
    return torch.where(torch.bincount(labels, minlength=n) > 0, acc, torch.tensor(float("nan")))


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    return multiclass_confusion_matrix(logits, labels, num_classes=logits.shape[1])


RECALL_GRID = 101  # points from recall 0 to 1 at which averaged precision-recall curves are drawn
EXACT_PR_LIMIT = 5_000_000  # scores above which a curve uses 1,001 fixed thresholds instead of every score


def precision_at_recall(scores: torch.Tensor, targets: torch.Tensor, recall: np.ndarray) -> np.ndarray:
    """One binary precision-recall curve (torchmetrics) read at each of `recall`, as average precision
    integrates it: at recall r, the precision of the highest threshold whose recall is at least r, and at
    r = 0 that of the highest threshold that recalls anything (thresholds that recall nothing span no
    recall); 0 beyond the largest recall reached. The area under the result is the curve's average
    precision, up to the grid spacing."""
    from torchmetrics.functional.classification import binary_precision_recall_curve

    scores, targets = torch.as_tensor(scores).flatten().float(), torch.as_tensor(targets).flatten().long()
    thresholds = 1001 if scores.numel() > EXACT_PR_LIMIT else None
    p, r, _ = binary_precision_recall_curve(scores, targets, thresholds=thresholds)
    # torchmetrics lists thresholds ascending and appends (precision 1, recall 0), which no threshold
    # reaches; with fixed thresholds, one above every score predicts nothing (precision nan)
    p, r = p[:-1].flip(0).numpy(), r[:-1].flip(0).numpy()
    keep = ~np.isnan(p) & ~np.isnan(r)
    p, r = p[keep], r[keep]
    out = np.zeros(len(recall))
    at = np.searchsorted(r, np.maximum(recall, np.nextafter(0.0, 1.0)), side="left")  # recall rises as thresholds fall
    inside = at < len(r)
    out[inside] = p[at[inside]]
    return out


def averaged_pr_curves(logits: torch.Tensor, labels: torch.Tensor, points: int = RECALL_GRID
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"micro": (recall, precision), "macro": (recall, precision)} on a common grid of recall from 0 to 1.
    Micro: one curve over every (image, class) pair. Macro: each class present in `labels` read at the
    grid (precision_at_recall), then the mean over those classes at each recall (the way scikit-learn
    averages curves: interpolate on a common axis, then average), so its area is the mAP column."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    probs = logits.softmax(1)
    grid = np.linspace(0.0, 1.0, points)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1])
    present = torch.bincount(labels, minlength=probs.shape[1]).nonzero().flatten().tolist()
    per_class = [precision_at_recall(probs[:, c], onehot[:, c], grid) for c in present]
    return {"micro": (grid, precision_at_recall(probs, onehot, grid)),
            "macro": (grid, np.mean(per_class, axis=0) if per_class else np.full(points, np.nan))}


def load_predictions(cell_dir: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of one split from a cell's predictions.npz."""
    path = Path(cell_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"no predictions.npz in '{cell_dir}'", hint="only finished cells have predictions")
    with np.load(path) as npz:
        if f"{split}_logits" not in npz:
            have = sorted(k.removesuffix("_logits") for k in npz.files if k.endswith("_logits"))
            raise UserError(f"'{path}' has no '{split}' predictions", hint=f"splits saved: {', '.join(have)}")
        return torch.from_numpy(npz[f"{split}_logits"]), torch.from_numpy(npz[f"{split}_labels"])
