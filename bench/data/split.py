"""Train/val/test splits: stratified per class, from one seed, persisted as file lists and reused.

A source's own splits win (iNat's official val, a folder's val/ subfolder, a manifest's split column);
what the source lacks is carved out of its train part, stratified. The saved JSON is the record: every
cell with the same data config and seed reads the same file, so no image can move between splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.artefacts import building
from bench.data.sources import SPLITS, Samples
from bench.store import atomic_write_text


def stratified(labels: np.ndarray, ratios: tuple[float, float, float], seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val, test: per class, shuffled, cut by ratio (rounded), train never empty."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_val = int(round(n * ratios[1]))
        n_test = int(round(n * ratios[2]))
        if n >= 3:  # a class with 3+ images appears in every split that has a non-zero ratio
            n_val = max(n_val, 1 if ratios[1] > 0 else 0)
            n_test = max(n_test, 1 if ratios[2] > 0 else 0)
        while n_val + n_test >= n and (n_val or n_test):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)


def make(samples: Samples, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    n = len(samples.paths)
    if samples.given is None or not (samples.given == "train").any():
        train, val, test = stratified(samples.labels, ratios, seed)
        return {"train": train, "val": val, "test": test}
    given = {s: np.flatnonzero(samples.given == s) for s in SPLITS}
    pool = given["train"]
    carve_val = 0.0 if len(given["val"]) else ratios[1]
    carve_test = 0.0 if len(given["test"]) else ratios[2]
    # the carved share is the ratio of the missing split to the part it is carved from
    share = carve_val + carve_test
    sub = (1 - share, carve_val, carve_test) if share else (1.0, 0.0, 0.0)
    train, val, test = stratified(samples.labels[pool], sub, seed)
    out = {"train": pool[train], "val": np.sort(np.concatenate([given["val"], pool[val]])),
           "test": np.sort(np.concatenate([given["test"], pool[test]]))}
    assert sum(len(v) for v in out.values()) == n
    return out


def origins(given: np.ndarray | None, ratios: tuple[float, float, float]) -> dict[str, str]:
    """Where each split comes from, in words, as `make` draws it: recorded in the result (data.origin), and
    said on the console when a split is carved from the source's train part, so that nobody is surprised to
    train on fewer images than the train folder holds."""
    if given is None or not (given == "train").any():
        return {s: f"{r:.0%} of all images, stratified per class" for s, r in zip(SPLITS, ratios, strict=True)}
    present = {s: bool((given == s).any()) for s in SPLITS}
    out = {s: f"the source's {s} split" for s in SPLITS if present[s]}
    carved = [(s, r) for s, r in zip(SPLITS[1:], ratios[1:], strict=True) if not present[s] and r > 0]
    for s, r in carved:
        out[s] = f"carved from the source's train split ({r:.0%} of its images, stratified per class)"
    if carved:
        out["train"] = f"the source's train split, less the {' and '.join(s for s, _ in carved)} carved from it"
    return out


def load_or_make(samples: Samples, ratios: tuple[float, float, float], seed: int, path: Path
                 ) -> dict[str, np.ndarray]:
    """The saved split at `path` if it covers exactly these images, else a new one, saved there (by one
    process at a time). The key in `path` names the files, so a saved split that no longer parses or covers
    them is damaged, not stale: it is made again, identically, from the seed."""
    index = {p: i for i, p in enumerate(samples.paths)}
    with building(path):
        try:
            saved = json.loads(path.read_text())
            if sorted(p for s in SPLITS for p in saved[s]) == sorted(samples.paths):
                return {s: np.array(sorted(index[p] for p in saved[s]), dtype=np.int64) for s in SPLITS}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        parts = make(samples, ratios, seed)
        atomic_write_text(path, json.dumps({s: [samples.paths[i] for i in parts[s]] for s in SPLITS}))
    return parts
