"""The one evaluation: a network's logits over a loader, their metrics (with test-time augmentation when
`train.tta` names views) and the arrays a cell's predictions.npz holds. `fit` evaluates its selected weights
through `evaluate`; so does a tuning study's one look at test."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import distributed
from bench.metrics import confusion_matrix, from_sums, full_metrics, row_sums

HELD_BYTES = 256 << 20  # an accelerator's logits held there between two copies to the host
ON_THE_HOST = ("cpu",)  # devices whose logits are host memory already: taken batch by batch


@torch.no_grad()
def predict(model: nn.Module, batches, prep: Callable, *, autocast: Callable | None = None,
            views: list[Callable] | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logits (float32, on the CPU) and labels for every batch, and the seconds it took. A cell's rank
    evaluates its shard of the split, and gets every rank's rows back, in order.

    With test-time `views`, the softmax of every view is averaged and its log returned in place of the
    logits, so argmax, top-k and cross-entropy of the result are those of the averaged prediction.
    """
    model.eval()
    start = time.perf_counter()
    total = len(batches.sampler) if hasattr(batches, "sampler") else None
    logits, labels, filled, held = [], [], 0, []

    def to_host() -> None:
        nonlocal filled
        for out in held:  # the first copy waits for the device; the others find their logits ready
            if total is not None:  # one array of the split's logits, filled as it comes: no second copy to join
                if not logits:
                    logits.append(torch.empty(total, out.shape[1]))
                logits[0][filled:filled + len(out)] = out
                filled += len(out)
            else:
                logits.append(out.cpu())
        held.clear()

    for x, y in batches:
        x = prep(x)
        with autocast() if autocast is not None else contextlib.nullcontext():
            if views:
                probs = torch.stack([F.softmax(model(view(x)).float(), 1) for view in views]).mean(0)
                out = probs.clamp_min(1e-30).log()
            else:
                out = model(x)
        held.append(out.float())
        labels.append(y)
        # an accelerator's logits wait there, a few batches' worth, so that copying them does not stall it
        # every batch while the host fetches the next one
        if out.device.type in ON_THE_HOST or sum(h.numel() for h in held) * 4 >= HELD_BYTES:
            to_host()
    to_host()
    logits = (logits[0][:filled] if total is not None else torch.cat(logits)) if logits else torch.empty(0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)
    if distributed.world() > 1:  # each rank evaluated its shard of the split (bench.distributed)
        logits, labels = distributed.gather_rows(logits), distributed.gather_rows(labels)
    seconds = time.perf_counter() - start
    return logits, labels, seconds


@torch.no_grad()
def score(model: nn.Module, batches, prep: Callable, *, autocast: Callable | None = None
          ) -> tuple[dict[str, float], int, float]:
    """An epoch's validation: classification_metrics (mean cross-entropy, top-1 and top-5 error), the number
    of images and the seconds, summed batch by batch on the device, so that only four numbers leave it (a
    10,000-class split's logits would be 4 GB to copy and reduce on the host every epoch). A cell's rank
    scores its shard, and the sums of every rank are added."""
    model.eval()
    device = prep.device
    start = time.perf_counter()
    # float64 sums on the device, but on Apple's, which has no float64: there each batch's logits go to the host
    on = torch.device("cpu") if device.type == "mps" else device
    total = torch.zeros(4, dtype=torch.float64, device=on)
    for x, y in batches:
        x = prep(x)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(x)
        total += row_sums(out.float().to(on), y.to(on, non_blocking=True))[0]
    sums = distributed.all_sum(total.tolist())  # .tolist() waits for the device's work: the clock stops after it
    return from_sums(sums), int(sums[3]), time.perf_counter() - start


@dataclass
class Evaluation:
    """One split evaluated: `name` (and f"{name}_tta" with views) -> full_metrics and (logits, labels).
    seconds and images are the plain pass's; tta_seconds what the TTA pass took (0 without views)."""
    metrics: dict[str, dict[str, float]]
    predictions: dict[str, tuple[Tensor, Tensor]]
    seconds: float
    images: int
    tta_seconds: float


def evaluate(net: nn.Module, loader, prep: Callable, name: str, *, autocast: Callable | None = None,
             views: list[Callable] | None = None) -> Evaluation:
    """`net` over `loader`: full_metrics and predictions under `name`, and under f"{name}_tta" when test-time
    `views` are given (the averaged softmax of every view, a second pass)."""
    logits, labels, seconds = predict(net, loader, prep, autocast=autocast)
    out = Evaluation({name: full_metrics(logits, labels)}, {name: (logits, labels)}, seconds, len(labels), 0.0)
    if views:
        logits, labels, out.tta_seconds = predict(net, loader, prep, autocast=autocast, views=views)
        out.predictions[f"{name}_tta"] = (logits, labels)
        out.metrics[f"{name}_tta"] = full_metrics(logits, labels)
    return out


def prediction_arrays(predictions: dict[str, tuple[Tensor, Tensor]], dtype: str = "float32") -> dict[str, np.ndarray]:
    """What a cell's predictions.npz holds: f"{split}_logits" (float32, or float16 by train.stored_logits) and
    f"{split}_labels" (int64) of each entry, and "test_confusion" (int64; rows = true class, columns =
    predicted, from the full-precision logits) when "test" is one."""
    arrays = {}
    for split, (logits, labels) in predictions.items():
        if dtype == "float16":  # a diverging cell's huge logits stay the largest float16, not inf (NaN metrics)
            logits = logits.to(torch.float16).clamp_(-65504, 65504)
        arrays[f"{split}_logits"] = logits.numpy().astype(dtype, copy=False)
        arrays[f"{split}_labels"] = labels.numpy().astype(np.int64, copy=False)
    if "test" in predictions:
        arrays["test_confusion"] = confusion_matrix(*predictions["test"]).numpy().astype(np.int64, copy=False)
    return arrays
