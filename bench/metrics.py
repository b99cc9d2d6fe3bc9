"""Metrics computed from logits (their directions: bench.directions).

`classification_metrics` is what the training loop calls on validation every epoch: keep it cheap.
`full_metrics` adds the threshold-free and class-balanced scalars a report shows for the final model;
both only need (logits, labels), so a report can recompute them from predictions.npz at any time.

torchmetrics is imported by the functions that use it: it pulls in torchvision and scipy (seconds), which
importing this module for load_predictions should not cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.store import PREDICTIONS

BLOCK = 2**24  # logits per block: what an evaluation takes beside its logits (64 MiB of float32)


def _blocks(total: int, width: int) -> list[slice]:
    """Slices of `total` rows (or columns) of `width` values each, a block's worth at a time."""
    step = max(1, BLOCK // max(1, width))
    return [slice(a, min(total, a + step)) for a in range(0, total, step)]


def row_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of float logits -> ([cross-entropy summed, top-1 right, top-5 right, rows], each row's
    log-sum-exp, each row's predicted class), the sums as one float64 tensor on the logits' device (counts
    exact): what classification_metrics adds up, a block or a batch at a time."""
    lse, predicted = torch.logsumexp(logits, 1), logits.argmax(1)
    top = logits.topk(min(5, logits.shape[1]), 1).indices
    sums = torch.stack([(lse - logits.gather(1, labels[:, None]).squeeze(1)).double().sum(),
                        (predicted == labels).sum().double(), (top == labels[:, None]).any(1).sum().double(),
                        torch.tensor(float(len(labels)), dtype=torch.float64, device=logits.device)])
    return sums, lse, predicted


def from_sums(sums: list[float]) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 error from row_sums' four sums (added up over blocks, batches or
    ranks)."""
    loss, right1, right5, n = sums
    return {"loss": loss / n, "top1_error": 1.0 - right1 / n, "top5_error": 1.0 - right5 / n}


def _scan(logits: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """One pass over the logits, a block of rows at a time: (top-1 and top-5 error and mean cross-entropy,
    each row's log-sum-exp, each row's predicted class)."""
    n, c = logits.shape
    lse, predicted = torch.empty(n), torch.empty(n, dtype=torch.long)
    total = torch.zeros(4, dtype=torch.float64)
    for rows in _blocks(n, c):
        sums, lse[rows], predicted[rows] = row_sums(logits[rows].float(), labels[rows])
        total += sums
    return from_sums(total.tolist()), lse, predicted


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (top-k capped at the class count) and mean cross-entropy, a block of rows at a
    time: 100,000 x 10,000 logits need no second copy of themselves."""
    return _scan(logits, torch.as_tensor(labels).long())[0]


def _present_mean(per_class: torch.Tensor, labels: torch.Tensor) -> float:
    # A class with no test image has no ROC or PR curve; torchmetrics scores it 0 (AUC) or nan (AP),
    # which would drag the mean down for a class the model was never asked about, so average the others.
    present = torch.bincount(labels, minlength=per_class.numel()) > 0
    values = per_class[present]
    return float(values.nanmean()) if values.numel() else float("nan")


def auc_ap(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's one-vs-rest ROC AUC and average precision of the softmax (nan for a class without an
    image, and AUC for one without a negative), as torchmetrics' curves give them — AUC counting a tied
    negative half, AP the mean over positives of the precision at each one's score, ties included — but from
    counts: a class's softmax column ranks as its log-softmax, so a block of columns is computed, sorted and
    searched at a time (numpy's sort: SIMD where the CPU has it), in seconds for 100,000 x 10,000 logits and
    a block's memory beside them. `lse`: each row's log-sum-exp, when the caller has it."""
    labels = torch.as_tensor(labels).long()
    n, c = logits.shape
    lse = _scan(logits, labels)[1] if lse is None else lse
    count = torch.bincount(labels, minlength=c)
    order = torch.argsort(labels, stable=True)  # images grouped by class
    start = torch.cumsum(count, 0) - count
    auc, ap = torch.full((c,), float("nan"), dtype=torch.float64), torch.full((c,), float("nan"), dtype=torch.float64)
    for cols in _blocks(c, n):
        scores = (logits[:, cols].float() - lse[:, None]).T.contiguous()  # (classes, images): log-softmax
        width = int(count[cols].max()) if cols.stop > cols.start else 0
        if width == 0:
            continue
        # each class's positives' scores, padded with +inf (which no count below includes)
        k = torch.arange(width)
        have = k[None, :] < count[cols, None]
        rows = order[(start[cols, None] + k[None, :]).clamp_max(max(0, n - 1))]
        pos = torch.where(have, scores.gather(1, rows), torch.tensor(float("inf")))
        ranked = torch.from_numpy(np.sort(scores.numpy(), axis=1))
        lt_all = torch.searchsorted(ranked, pos).double()
        le_all = torch.searchsorted(ranked, pos, right=True).double()
        pos_ranked = pos.sort(1).values
        lt_pos = torch.searchsorted(pos_ranked, pos).double()
        le_pos = torch.searchsorted(pos_ranked, pos, right=True).double()
        p, negatives = count[cols].double(), n - count[cols].double()
        below = (lt_all - lt_pos) + 0.5 * ((le_all - lt_all) - (le_pos - lt_pos))  # negatives under each positive
        precision = torch.where(have, (p[:, None] - lt_pos) / (n - lt_all).clamp_min(1), 0.0)  # at each positive
        auc[cols] = torch.where((p > 0) & (negatives > 0), torch.where(have, below, 0.0).sum(1) / (p * negatives),
                                float("nan"))
        ap[cols] = torch.where(p > 0, precision.sum(1) / p, float("nan"))
    return auc, ap


def full_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """classification_metrics plus macro and weighted F1, macro one-vs-rest ROC AUC and mean average
    precision (macro over the classes present in `labels`)."""
    from torchmetrics.functional.classification import multiclass_f1_score

    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels).long()
    n = logits.shape[1]
    out, lse, predicted = _scan(logits, labels)
    for average in ("macro", "weighted"):
        out[f"f1_{average}"] = float(multiclass_f1_score(predicted, labels, num_classes=n, average=average))
    auc, ap = auc_ap(logits, labels, lse)
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
        # float16 (train.stored_logits) read back as float32, which every metric and plot computes in
        return torch.from_numpy(npz[f"{split}_logits"]).float(), torch.from_numpy(npz[f"{split}_labels"])
