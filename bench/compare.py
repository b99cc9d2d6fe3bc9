"""Is cell A really better than cell B? A paired comparison on the same test images.

McNemar's test looks only at the images the two cells disagree on (A right and B wrong: b; A wrong and
B right: c). Under "equally good" each such image is a fair coin, so the two-sided p-value is the exact
binomial one while b + c is small, and the chi-square with continuity correction (1 degree of freedom)
beyond. The paired bootstrap resamples the images (the same draw for both cells) and gives a confidence
interval of err(A) - err(B).

Over several seeds (`pooled_mcnemar`, the report's significance marks) each seed pairs two cells on that
seed's own split, and the discordant counts are summed over the seeds: McNemar's test stratified by seed
(the Mantel-Haenszel test for matched pairs), so every seed's images count and none is paired across splits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.errors import UserError, first_line
from bench.store import PREDICTIONS, Record

if TYPE_CHECKING:
    import torch

EXACT_BELOW = 25  # discordant pairs; the usual switch from the exact test to the chi-square approximation


def read_predictions(cell_dir: Path | str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """load_predictions, with a damaged predictions.npz (cut short, not a zip, arrays missing or not
    paired) refused on one line naming it; report, compare and export all read predictions through here."""
    from bench.metrics import load_predictions  # torch, imported on demand: `import bench.report` stays light

    path = Path(cell_dir) / PREDICTIONS

    def damaged(why: str) -> UserError:
        return UserError(f"damaged predictions file ({why})", file=path,
                         hint=f"rerun the cell: bench run SUITE --only {Path(cell_dir).name} --force")

    try:
        logits, labels = load_predictions(Path(cell_dir), split)
    except UserError:
        raise
    except Exception as e:  # numpy and zipfile raise a different type for each way a file can be broken
        raise damaged(first_line(e, typed=True)) from None
    classes = logits.shape[1] if logits.ndim == 2 else 0
    if not classes or labels.ndim != 1 or len(logits) != len(labels):
        raise damaged(f"{split} logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not pair")
    if labels.is_floating_point() or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < classes):
        raise damaged(f"{split} labels are not class indices below {classes}")
    return logits, labels.long()


def mcnemar(b: int, c: int) -> tuple[float, str]:
    """Two-sided p-value of McNemar's test from the discordant counts, and the method used."""
    n = b + c
    if n == 0:
        return 1.0, "exact"
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
        return min(1.0, 2 * tail), "exact"
    chi2 = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(chi2 / 2)), "chi-square, continuity-corrected"  # chi2(1) survival function


def bootstrap_ci(wrong_a: np.ndarray, wrong_b: np.ndarray, resamples: int = 10_000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(wrong_a - wrong_b) over paired resamples of the images.

    Only how many images of each kind (A worse, tie, B worse) a resample draws changes the difference, so a
    resample is one multinomial draw of those three counts: the same distribution as resampling indices,
    at a cost independent of the test-set size."""
    d = wrong_a.astype(np.int64) - wrong_b.astype(np.int64)
    n = len(d)
    p = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()], dtype=float) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=resamples)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    split: str
    images: int
    error_a: float
    error_b: float
    a_only_right: int  # b in McNemar's notation
    b_only_right: int  # c
    p_value: float
    method: str
    ci_low: float
    ci_high: float
    confidence: float

    def summary(self) -> str:
        diff = self.error_a - self.error_b
        verdict = ("the difference is significant at the 5% level" if self.p_value < 0.05
                   else "no significant difference at the 5% level")
        return "\n".join([
            f"A: {self.a}", f"B: {self.b}",
            f"{self.split} images: {self.images}; error A {self.error_a:.4f}, B {self.error_b:.4f}, "
            f"A - B {diff:+.4f}",
            f"{self.confidence:.0%} paired bootstrap CI of A - B: [{self.ci_low:+.4f}, {self.ci_high:+.4f}]",
            f"McNemar ({self.method}): A right & B wrong {self.a_only_right}, A wrong & B right "
            f"{self.b_only_right}, p = {self.p_value:.4g}; {verdict}",
        ])


def _label(record: Record) -> str:
    return f"{record.cell['label']} ({record.dir.name})"


def compare_cells(a: Record, b: Record, split: str = "test", resamples: int = 10_000,
                  confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Refuses (UserError) unless both cells were evaluated on the same split, image for image."""
    import torch

    keys = [r.result.get("data", {}).get("split_key") for r in (a, b)]
    if keys[0] != keys[1] or keys[0] is None:
        raise UserError(f"the cells used different data splits ({keys[0]} vs {keys[1]})",
                        hint="a paired test needs the same images: compare cells of one data config and seed")
    logits_a, labels_a = read_predictions(a.dir, split)
    logits_b, labels_b = read_predictions(b.dir, split)
    if labels_a.shape != labels_b.shape or not torch.equal(labels_a, labels_b):
        raise UserError(f"the cells' {split} labels differ", hint="a paired test needs the same images in the same order")
    wrong_a = (logits_a.argmax(1) != labels_a).numpy()
    wrong_b = (logits_b.argmax(1) != labels_b).numpy()
    b_count, c_count = int((~wrong_a & wrong_b).sum()), int((wrong_a & ~wrong_b).sum())
    p, method = mcnemar(b_count, c_count)
    low, high = bootstrap_ci(wrong_a, wrong_b, resamples, confidence, seed)
    return Comparison(_label(a), _label(b), split, len(labels_a), float(wrong_a.mean()), float(wrong_b.mean()),
                      b_count, c_count, p, method, low, high, confidence)


def correctness(cell_dir: Path | str, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
    """(right, labels) per image of a cell's saved `split` predictions; None when it saved none (a cell
    whose suite has no test split, a record from before predictions were kept)."""
    if not (Path(cell_dir) / PREDICTIONS).is_file():
        return None
    try:
        logits, labels = read_predictions(cell_dir, split)
    except UserError as e:
        if "has no" in e.reason:  # no such split saved: nothing to pair, which is not damage
            return None
        raise
    if not len(labels):
        return None
    return (logits.argmax(1) == labels).numpy(), labels.numpy()


@dataclass(frozen=True)
class Pooled:
    """McNemar's test over the seeds two cells share: A right & B wrong (b), A wrong & B right (c)."""
    seeds: int
    images: int
    error_a: float
    error_b: float
    a_only_right: int
    b_only_right: int
    p_value: float
    method: str


def pooled_mcnemar(pairs: Iterable[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]
                   ) -> Pooled | None:
    """McNemar's test on the discordant images summed over pairs ((right_a, labels_a), (right_b, labels_b)),
    one pair per seed, each on one split; a pair whose labels differ (not the same images) is left out.
    None when no pair is left."""
    b = c = n = wrong_a = wrong_b = seeds = 0
    for (right_a, labels_a), (right_b, labels_b) in pairs:
        if labels_a.shape != labels_b.shape or not np.array_equal(labels_a, labels_b):
            continue
        seeds, n = seeds + 1, n + len(labels_a)
        b += int((right_a & ~right_b).sum())
        c += int((~right_a & right_b).sum())
        wrong_a, wrong_b = wrong_a + int((~right_a).sum()), wrong_b + int((~right_b).sum())
    if not seeds:
        return None
    p, method = mcnemar(b, c)
    return Pooled(seeds, n, wrong_a / n, wrong_b / n, b, c, p, method)
