"""Metrics and cost against small cases worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

# 3 classes, 4 images; class 2 never occurs. Predictions: 0, 1, 1, 0 (image 2 is wrong).
LOGITS = torch.tensor([[2.0, 1, 0], [0, 2, 1], [0, 2, 1], [2, 0, 1]])
LABELS = torch.tensor([0, 1, 0, 0])


def test_classification_metrics_keeps_its_cheap_signature():
    from bench.metrics import classification_metrics

    m = classification_metrics(LOGITS, LABELS)
    assert set(m) == {"loss", "top1_error", "top5_error"}
    assert m["top1_error"] == pytest.approx(0.25) and m["top5_error"] == 0.0  # top-5 capped at 3 classes
    log_z = math.log(math.e**2 + math.e + 1)  # every row is a permutation of (2, 1, 0)
    expected = sum(log_z - LOGITS[i, c].item() for i, c in enumerate(LABELS.tolist())) / 4
    assert m["loss"] == pytest.approx(expected, abs=1e-6)


def test_an_epochs_validation_sums_on_the_device_what_classification_metrics_computes():
    """bench.evaluate.score adds each batch's sums on the device; the figures are those of every logit at once
    (counts exactly, the loss to rounding), and the model's logits never reach the host."""
    from torch.utils.data import DataLoader, TensorDataset

    from bench.data.loaders import Preprocess
    from bench.evaluate import predict, score
    from bench.metrics import classification_metrics

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (203, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 7, (203,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 7))
    batches = DataLoader(TensorDataset(x, y), batch_size=32)
    prep = Preprocess(torch.device("cpu"))
    figures, images, seconds = score(model, batches, prep)
    logits, labels, _ = predict(model, batches, prep)
    expected = classification_metrics(logits, labels)
    assert images == 203 and seconds > 0
    assert figures["top1_error"] == expected["top1_error"] and figures["top5_error"] == expected["top5_error"]
    assert 0 < expected["top1_error"] < 1 and 0 < expected["top5_error"] < expected["top1_error"]
    assert figures["loss"] == pytest.approx(expected["loss"], rel=1e-12)


@pytest.mark.parametrize("held", [0, 7 * 4 * 64, 7 * 4 * 70, 1 << 30])  # bytes: each batch, 2, 3, all 7
@pytest.mark.parametrize("sampled", [True, False])
def test_logits_held_on_an_accelerator_between_copies_reach_the_host_as_taken_batch_by_batch(
        monkeypatch, held, sampled):
    """bench.evaluate.predict leaves an accelerator's logits there a few batches at a time (one wait a copy,
    not one a batch): the host gets the same logits and labels, in order, whatever the hold, with the split's
    one array (a loader with a sampler) or the list of batches joined."""
    from torch.utils.data import DataLoader, TensorDataset

    from bench import evaluate
    from bench.data.loaders import Preprocess

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (203, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 7, (203,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 7))
    batches = DataLoader(TensorDataset(x, y), batch_size=32)
    if not sampled:
        batches = list(batches)
    prep = Preprocess(torch.device("cpu"))
    expected = evaluate.predict(model, batches, prep)
    monkeypatch.setattr(evaluate, "ON_THE_HOST", ())  # the CPU held as an accelerator is
    monkeypatch.setattr(evaluate, "HELD_BYTES", held)
    got = evaluate.predict(model, batches, prep)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], y) and got[0].shape == (203, 7)


def test_full_metrics_by_hand():
    from bench.metrics import full_metrics

    m = full_metrics(LOGITS, LABELS)
    # class 0: P 2/2, R 2/3 -> F1 0.8; class 1: P 1/2, R 1/1 -> F1 2/3; class 2 absent from both: ignored
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-6)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4, abs=1e-6)
    # one-vs-rest AUC, ties count 1/2: class 0 (positives 0,2,3 vs negative 1): (1 + 1/2 + 1) / 3, class 1 the
    # same; the absent class 2 has no curve and must not count as 0
    assert m["auc_macro"] == pytest.approx(2.5 / 3, abs=1e-6)
    # AP: class 0 thresholds {0.665: P 1, R 2/3; 0.090: P 3/4, R 1} -> 2/3 + 1/3 * 3/4; class 1: P 1/2 at R 1
    assert m["map"] == pytest.approx(((2 / 3 + 0.25) + 0.5) / 2, abs=1e-4)
    assert set(m) >= {"loss", "top1_error", "top5_error"}


@pytest.mark.parametrize("images, classes, tied, block", [(500, 7, False, None), (300, 12, True, None),
                                                           (400, 30, False, 1000), (200, 9, True, 700)])
def test_metrics_in_blocks_are_torchmetrics_figures(images, classes, tied, block, monkeypatch):
    """Cross-entropy, top-k, F1, and AUC and AP from counts over blocks of log-softmax columns (the way a
    10,000-class split fits in memory) give what torchmetrics computes from the softmax, with exact ties
    (duplicated rows), a class without images, and blocks smaller than a row."""
    import warnings

    import torch.nn.functional as F
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_auroc,
        multiclass_average_precision,
        multiclass_f1_score,
    )

    from bench import metrics

    if block is not None:
        monkeypatch.setattr(metrics, "BLOCK", block)
    g = torch.Generator().manual_seed(images)
    logits = torch.randn(images, classes, generator=g) * 3
    if tied:
        logits[images // 2:] = logits[:images - images // 2]
    labels = torch.randint(0, classes - 1, (images,), generator=g)  # the last class has no image
    got = metrics.full_metrics(logits, labels)
    probs = logits.softmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = multiclass_auroc(probs, labels, num_classes=classes, average="none")[:-1].mean()
        ap = multiclass_average_precision(probs, labels, num_classes=classes, average="none")[:-1].mean()
    expected = {"loss": F.cross_entropy(logits, labels), "auc_macro": auc, "map": ap,
                **{f"top{k}_error": 1 - multiclass_accuracy(logits, labels, num_classes=classes, top_k=k,
                                                           average="micro") for k in (1, 5)},
                **{f"f1_{a}": multiclass_f1_score(logits, labels, num_classes=classes, average=a)
                   for a in ("macro", "weighted")}}
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=1e-6), key


def test_perfect_and_binary_cases():
    from bench.metrics import full_metrics

    p = torch.tensor([0.1, 0.4, 0.35, 0.8])  # the textbook ROC example: AUC 0.75, AP 0.8333
    logits = torch.stack([torch.log(1 - p), torch.log(p)], 1)
    m = full_metrics(logits, torch.tensor([0, 0, 1, 1]))
    assert m["auc_macro"] == pytest.approx(0.75) and m["map"] == pytest.approx(5 / 6, abs=1e-4)
    perfect = full_metrics(torch.eye(4) * 5, torch.arange(4))
    assert perfect["top1_error"] == 0 and perfect["f1_macro"] == 1 and perfect["auc_macro"] == 1 and perfect["map"] == 1


def test_per_class_accuracy_and_confusion_matrix():
    from bench.metrics import confusion_matrix, per_class_accuracy

    acc = per_class_accuracy(LOGITS, LABELS)
    assert acc[:2].tolist() == pytest.approx([2 / 3, 1.0]) and math.isnan(acc[2])
    assert confusion_matrix(LOGITS, LABELS).tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_precision_at_recall_by_hand(monkeypatch):
    import numpy as np

    from bench import metrics

    # thresholds from the top: 0.95 P 1 R 1/2; 0.85 P 1/2 R 1/2; 0.75 P 2/3 R 1; 0.65 P 1/2 R 1
    scores, targets = torch.tensor([0.95, 0.85, 0.75, 0.65]), torch.tensor([1, 0, 1, 0])
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    expected = [1, 1, 1, 2 / 3, 2 / 3]  # recall 0 takes the top threshold's precision, not 1 by fiat
    assert metrics.precision_at_recall(scores, targets, grid) == pytest.approx(expected)
    # the top-scored image is a negative (0.9: P 0, R 0); recall 0 starts with the first hit: 0.8 P 1/2 R 1/2
    wrong_first = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1])
    assert metrics.precision_at_recall(*wrong_first, grid) == pytest.approx([1 / 2, 1 / 2, 1 / 2, 2 / 3, 2 / 3])
    monkeypatch.setattr(metrics, "EXACT_PR_LIMIT", 0)  # fixed thresholds, as for a large test split
    assert metrics.precision_at_recall(scores, targets, grid) == pytest.approx(expected)
    assert metrics.precision_at_recall(*wrong_first, grid) == pytest.approx([1 / 2, 1 / 2, 1 / 2, 2 / 3, 2 / 3])


def test_macro_pr_curve_is_the_mean_of_the_present_classes_curves():
    import numpy as np

    from bench.metrics import averaged_pr_curves, full_metrics, precision_at_recall

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (80,), generator=gen)  # class 3 never occurs: it has no curve
    logits = torch.randn(80, 4, generator=gen) + torch.eye(4)[labels]
    curves = averaged_pr_curves(logits, labels, points=2001)
    recall, macro = curves["macro"]
    probs = logits.softmax(1)
    per_class = [precision_at_recall(probs[:, c], labels == c, recall) for c in range(3)]
    assert macro == pytest.approx(np.mean(per_class, axis=0))
    assert np.trapezoid(macro, recall) == pytest.approx(full_metrics(logits, labels)["map"], abs=2e-3)
    micro_recall, micro = curves["micro"]
    assert np.all(np.diff(micro_recall) > 0) and micro_recall[0] == 0 and micro[0] > 0


def test_higher_is_better_covers_every_report_column():
    from bench.directions import HIGHER_IS_BETTER
    from bench.report import COLUMNS

    assert {c.metric for c in COLUMNS.values()} <= set(HIGHER_IS_BETTER)
    assert HIGHER_IS_BETTER["map"] and not HIGHER_IS_BETTER["top1_error"]


def test_forward_gflops_counts_convolutions_and_linear_layers():
    from bench.cost import forward_gflops

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    conv = 2 * (8 * 8 * 8) * (3 * 3 * 3)  # 2 FLOPs per multiply-add, per output element
    grouped = 2 * (8 * 8 * 8) * (1 * 3 * 3)  # each output channel sees one input channel
    linear = 2 * 512 * 10
    assert forward_gflops(model, 8) == pytest.approx((conv + grouped + linear) / 1e9)
    assert forward_gflops(model[:2], (8, 16)) == pytest.approx(2 * (conv + grouped) / 1e9)


def test_forward_gflops_leaves_the_model_and_rng_alone():
    from bench.cost import forward_gflops

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert forward_gflops(model, 8) > 0
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_time_to_accuracy_reads_cumulative_train_seconds():
    from bench.cost import time_to_accuracy

    rows = [{"train_seconds": "2.0", "val_error": "0.6"}, {"train_seconds": "3.0", "val_error": "0.4"},
            {"train_seconds": "4.0", "val_error": "0.3"}]
    assert time_to_accuracy(rows, 0.4) == pytest.approx(5.0)  # reaching the target exactly counts
    assert time_to_accuracy(rows, 0.35) == pytest.approx(9.0)
    assert time_to_accuracy(rows, 0.1) is None
    assert time_to_accuracy(rows, 0.9) == pytest.approx(2.0)


class DataDependent(nn.Module):
    """Reads a value in forward: cannot run on shape-only meta tensors, so the CPU fallback counts it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) * (1.0 if x.sum().item() >= 0 else -1.0)


def test_forward_gflops_meta_and_cpu_counts_agree_and_fallback_works():
    from bench.cost import _count, forward_gflops

    model = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=4))
    assert _count(model, 3, 12, 12, "meta") == _count(model, 3, 12, 12, "cpu") > 0
    with pytest.raises(RuntimeError):
        _count(DataDependent(), 3, 4, 4, "meta")
    assert forward_gflops(DataDependent(), 4) == pytest.approx(2 * 4 * 4 * 4 * 3 / 1e9)
