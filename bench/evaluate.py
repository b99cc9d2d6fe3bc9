"""TEMPORARY stand-in until the wt-train merge."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.metrics import confusion_matrix, full_metrics
from bench.train import predict


@dataclass
class Evaluation:
    metrics: dict
    predictions: dict
    seconds: float
    images: int
    tta_seconds: float


def evaluate(net, loader, prep, name, *, autocast=None, views=None):
    logits, labels, sec = predict(net, loader, prep, autocast=autocast)
    ev = Evaluation({name: full_metrics(logits, labels)}, {name: (logits, labels)}, sec, len(labels), 0.0)
    if views:
        logits, labels, tsec = predict(net, loader, prep, autocast=autocast, views=views)
        ev.predictions[f"{name}_tta"] = (logits, labels)
        ev.metrics[f"{name}_tta"] = full_metrics(logits, labels)
        ev.tta_seconds = tsec
    return ev


def prediction_arrays(predictions):
    arrays = {}
    for split, (logits, labels) in predictions.items():
        arrays[f"{split}_logits"] = logits.numpy().astype(np.float32)
        arrays[f"{split}_labels"] = labels.numpy().astype(np.int64)
    if "test" in predictions:
        arrays["test_confusion"] = confusion_matrix(*predictions["test"]).numpy().astype(np.int64)
    return arrays
