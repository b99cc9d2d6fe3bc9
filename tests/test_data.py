"""Synthetic generator, folder source, stratified splits and their persistence, the decoded cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig, SyntheticConfig
from bench.data import cache, prepare, synthetic
from bench.data.sources import scan_folder
from bench.data.split import load_or_make, stratified
from bench.errors import UserError
from bench.techniques import AUGMENTS
from tests.support import packed


def test_synthetic_is_deterministic_long_tailed_jpeg(tmp_path):
    cfg = SyntheticConfig(classes=5, images=100, size=24, imbalance=4.0)
    a = synthetic.generate(cfg, tmp_path / "a")
    b = synthetic.generate(cfg, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files[:20])
    sizes = [len(list(d.glob("*.jpg"))) for d in sorted(a.iterdir()) if d.is_dir()]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 3.5 * sizes[-1]
    with Image.open(a / files[0]) as im:
        assert im.format == "JPEG" and im.size == (24, 24)


def test_synthetic_classes_differ_in_structure_not_mean_colour(tmp_path):
    root = synthetic.generate(SyntheticConfig(classes=4, images=1200, size=16, imbalance=1.0), tmp_path / "s")
    samples = scan_folder(root)
    images = np.stack([cache.load_image(root / p, 16) for p in samples.paths]).astype(float)
    means = np.stack([images[samples.labels == c].mean(axis=(0, 1, 2)) for c in range(4)])
    assert np.ptp(means, axis=0).max() < 20  # per-class mean colours within a few grey levels
    # ... and yet the classes differ in shape: a nearest-centroid classifier on colour-blind foreground maps
    # (each pixel's distance from the background colour, scaled to the image's maximum) beats chance by far,
    # while the same classifier on shuffled labels does not
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)
    maps = np.abs(images - corners[:, None, None]).sum(-1).reshape(len(images), -1)
    maps /= maps.max(1, keepdims=True) + 1e-9
    order = np.random.default_rng(0).permutation(len(maps))
    train, test = order[:600], order[600:]

    def accuracy(labels: np.ndarray) -> float:
        centroids = np.stack([maps[train][labels[train] == c].mean(0) for c in range(4)])
        guess = ((maps[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        return float((guess == labels[test]).mean())

    assert accuracy(samples.labels) > 0.45  # chance is 0.25
    assert accuracy(np.random.default_rng(1).permutation(samples.labels)) < 0.35


def test_folder_with_split_subfolders(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / split / cls / f"{i}.jpg")
    samples = scan_folder(tmp_path)
    assert samples.classes == ["ant", "bee"] and len(samples.paths) == 16
    parts = load_or_make(samples, (0.7, 0.15, 0.15), 0, tmp_path / "split.json")
    assert len(parts["val"]) == 4  # the folder's own val split is kept
    assert len(parts["test"]) > 0  # test carved from train, stratified
    assert set(np.unique(samples.labels[parts["test"]])) == {0, 1}


def test_stratified_split_is_disjoint_complete_and_per_class():
    labels = np.repeat(np.arange(5), [50, 30, 20, 10, 3])
    train, val, test = stratified(labels, (0.7, 0.15, 0.15), seed=3)
    together = np.concatenate([train, val, test])
    assert len(together) == len(labels) == len(set(together.tolist()))
    for c in range(5):
        n = (labels == c).sum()
        assert abs((labels[train] == c).sum() - 0.7 * n) <= 1.5
        assert (labels[val] == c).sum() >= 1 and (labels[test] == c).sum() >= 1
    assert [a.tolist() for a in stratified(labels, (0.7, 0.15, 0.15), 3)] == [train.tolist(), val.tolist(), test.tolist()]
    assert stratified(labels, (0.7, 0.15, 0.15), 4)[0].tolist() != train.tolist()


def test_split_is_saved_and_reused(tmp_path):
    root = synthetic.generate(SyntheticConfig(classes=3, images=60, size=16), tmp_path / "s")
    samples = scan_folder(root)
    path = tmp_path / "splits" / "k.json"
    first = load_or_make(samples, (0.6, 0.2, 0.2), 0, path)
    saved = json.loads(path.read_text())
    assert set(saved) == {"train", "val", "test"} and saved["val"][0].endswith(".jpg")
    # a saved split wins over recomputation, even with another seed: the file is the record
    again = load_or_make(samples, (0.6, 0.2, 0.2), 99, path)
    assert all(np.array_equal(first[s], again[s]) for s in first)


def test_prepare_gives_uint8_batches_and_train_only_augmentation(tmp_path):
    cfg = DataConfig(image_size=16, synthetic=SyntheticConfig(classes=3, images=60, size=16))
    data = prepare(cfg, 0, tmp_path / "splits", AUGMENTS["crop_flip"](16))
    x, y = data.datasets["train"].__getitems__([0, 1, 2])
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 3, 16, 16) and y.dtype == torch.int64
    assert data.datasets["train"].transform is not None
    assert data.datasets["val"].transform is None and data.datasets["test"].transform is None
    assert sum(data.info["images"].values()) == 60


def test_decoded_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = synthetic.generate(SyntheticConfig(classes=2, images=20, size=16), tmp_path / "s")
    samples = scan_folder(root)
    side = np.full(len(samples.paths), 16)
    first = cache.decoded(root, samples.paths, side, side, 16)
    calls = []
    monkeypatch.setattr(cache, "load_image", lambda *a: calls.append(a) or np.zeros((16, 16, 3), np.uint8))
    again = cache.decoded(root, samples.paths, side, side, 16)
    assert calls == [] and again.folder == first.folder  # second use: no decoding
    Image.new("RGB", (16, 16), (255, 0, 0)).save(root / samples.paths[0])  # a source changes
    cache.decoded(root, samples.paths, side, side, 16)
    assert len(calls) == len(samples.paths)
    assert first.pixels.shape == (len(samples.paths) * 16 * 16 * 3,) and first.bad == {}
    assert first.index.tolist() == [[i * 768, 16, 16] for i in range(len(samples.paths))]


def test_missing_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        scan_folder(tmp_path / "empty")


def test_a_larger_cache_feeds_random_crops_and_evaluation_resizes_then_centre_crops(tmp_path):
    from torchvision.transforms.v2 import functional as F

    from bench.techniques.augment import build_augment

    cfg = DataConfig(image_size=16, cache_size=24, synthetic=SyntheticConfig(classes=3, images=60, size=32))
    assert cfg.scale_size == 18  # floor(16 / 0.875)
    data = prepare(cfg, 0, tmp_path / "splits", build_augment([{"op": "rrc", "min_scale": 0.5}], 16))
    val = data.datasets["val"]
    stored = val.stored(val.rows[0])
    assert stored.shape == (24, 24, 3)  # the cache keeps 24 px, more than evaluation needs
    x, _ = data.datasets["train"].__getitems__([0, 1, 2])
    assert tuple(x.shape) == (3, 3, 16, 16)
    v, _ = val.__getitems__([0])
    expected = F.center_crop(F.resize(torch.from_numpy(np.array(stored)).permute(2, 0, 1), 18, antialias=True), 16)
    assert torch.equal(v[0], expected)


def test_the_worker_count_changes_neither_a_cells_id_nor_a_bit_of_its_results(write_suite, tmp_path):
    """Each image's augmentation is drawn from (seed, epoch, index): two loader workers give what the main
    process gives, for torchvision's ops and timm's policies alike, in the same cell."""
    import os

    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress
    from tests.support import outputs

    path = write_suite('augment = "crop_flip"\n\n[[cells]]\nlabel = "crop"\n\n'
                       '[[cells]]\nlabel = "policy"\n"train.augment" = ["rand-m9-mstd0.5", "rrc", "hflip"]\n')
    ids = {}
    for workers in (0, 2):
        planned = api.plan(path, check=False, overrides=[f"data.workers={workers}"])
        assert all(c.config.data.workers == workers for c in planned.cells)
        ids[workers] = [c.id for c in planned.cells]
        summary = api.run(planned, results=tmp_path / str(workers), device="cpu",
                          options=RunOptions(isolate=False, threads=1), progress=LogProgress(open(os.devnull, "w")))
        assert len(summary.ran) == 2 and not summary.failed, summary.failed
    assert ids[0] == ids[2]
    assert outputs(tmp_path / "0" / "tiny") == outputs(tmp_path / "2" / "tiny")


def test_an_image_drawn_twice_in_an_epoch_gets_two_augmentations(tmp_path):
    """The balanced and square-root samplers draw with replacement: each draw is seeded by its place in the
    epoch, not by the image, so a repeat is augmented anew, and the same again in the next run."""
    from bench.data.loaders import ArrayDataset, make_loader

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ds = ArrayDataset(packed(tmp_path / "cache", images), np.arange(2), np.arange(2), 16, 16, AUGMENTS["crop_flip"](16))

    def first_batch():
        x, y = next(iter(make_loader(ds, 4, train=True, seed=0, sampler=[0, 0, 1, 1])))
        return x, y

    x, y = first_batch()
    assert y.tolist() == [0, 0, 1, 1]
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[2], x[3])
    assert torch.equal(first_batch()[0], x)


@pytest.mark.parametrize("workers, device, cpus, expected", [
    ("auto", "cpu", 16, 0),  # the cores train
    ("auto", "cuda", 4, 3),  # the cell's share less its training process
    ("auto", "cuda", 32, 8),
    ("auto", "cuda", 1, 0),
    (3, "cpu", None, 3),
])
def test_auto_workers_follow_the_cells_cpu_share_on_a_gpu(workers, device, cpus, expected):
    from bench.network import loader_workers

    assert loader_workers(workers, torch.device(device), cpus) == expected


def test_a_cell_records_its_loader(write_suite, tmp_path):
    import os

    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress

    planned = api.plan(write_suite(""), check=False)
    summary = api.run(planned, results=tmp_path, device="cpu", options=RunOptions(isolate=False, threads=1),
                      progress=LogProgress(open(os.devnull, "w")))
    record = json.loads((summary.suite_dir / summary.ran[0] / "result.json").read_text())
    assert record["train"]["loader_workers"] == 0 and record["train"]["pin_memory"] is False
    assert record["config"]["data"]["workers"] == "auto"
