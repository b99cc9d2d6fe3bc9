"""Recipes that change what the network sees or how it is scored: timm's Mixup modes, BCE and JSD losses,
AugMix splits, timm's policy strings, grayscale and blur, model keyword arguments (stochastic depth), and
split folders named as other tools name them. Each is checked against what it promises, and through a suite."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench import api
from bench.config import DataConfig, TrainConfig, load_suite
from bench.data import prepare
from bench.data.loaders import ArrayDataset
from bench.data.sources import read_source
from bench.errors import UserError
from bench.models.factory import create_model
from bench.progress import LogProgress
from bench.suite import expand
from bench.techniques import LOSSES, build_augment
from bench.techniques.augment import TimmPolicy
from bench.weights import init_key
from tests.support import packed


# ----------------------------------------------------------------------------------------- losses
def test_bce_on_one_hot_targets_is_the_hand_formula():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    for smoothing in (0.0, 0.1):
        t = F.one_hot(y, 4).float() * (1 - smoothing) + smoothing / 4
        p = torch.sigmoid(logits)
        hand = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
        loss = LOSSES["bce"](TrainConfig(loss="bce", label_smoothing=smoothing), [1] * 4)(logits, y)
        assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    summed = LOSSES["bce"](TrainConfig(loss="bce", bce_sum=True), [1] * 4)(logits, y)
    t = F.one_hot(y, 4).float()
    assert summed.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(1).mean().item(), rel=1e-5)


def test_bce_target_threshold_turns_mixed_targets_into_zero_or_one():
    logits = torch.tensor([[1.0, -0.5, 0.2], [-1.0, 0.3, 2.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.1, 0.8]])
    loss = LOSSES["bce"](TrainConfig(loss="bce", bce_target_threshold=0.2), [1] * 3)(logits, soft)
    hard = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, hard).item())
    assert loss.item() != pytest.approx(F.binary_cross_entropy_with_logits(logits, soft).item())


def test_jsd_is_clean_cross_entropy_plus_alpha_times_the_views_divergence_from_their_mixture():
    torch.manual_seed(1)
    n, k, alpha = 4, 5, 12.0
    logits, y = torch.randn(3 * n, k), torch.randint(0, k, (n,))
    loss = LOSSES["jsd"](TrainConfig(loss="jsd", aug_splits=3, augment="hflip", jsd_alpha=alpha), [1] * k)
    p = F.softmax(logits, 1).view(3, n, k)
    m = p.mean(0)
    kl = sum((p[i] * (p[i].log() - m.log())).sum(1).mean() for i in range(3)) / 3
    hand = F.cross_entropy(logits[:n], y) + alpha * kl
    assert loss(logits, y.repeat(3)).item() == pytest.approx(hand.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------- AugMix splits
def test_aug_splits_put_each_image_clean_then_augmented_in_the_batch(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    ds = ArrayDataset(packed(tmp_path / "cache", images), np.arange(6), np.arange(6) % 2, 16, 16,
                      build_augment("augmix-m5-w3-d2", 16))
    ds.splits = 3
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    x, y = ds.__getitems__([0, 1, 2, 3])
    assert x.shape == (12, 3, 16, 16) and y.tolist() == [0, 1, 0, 1] * 3
    clean = torch.from_numpy(images[:4]).permute(0, 3, 1, 2)
    assert torch.equal(x[:4], clean)
    assert not torch.equal(x[4:8], clean) and not torch.equal(x[8:], clean) and not torch.equal(x[4:8], x[8:])


@pytest.mark.parametrize(("extra", "fragment"), [
    ('loss = "jsd"', "set aug_splits = 3"),
    ('aug_splits = 3\nloss = "jsd"', "aug_splits needs train.augment"),
    ('aug_splits = 3\naugment = "hflip"\nmix = "mixup"', "aug_splits excludes train.mix"),
    ("aug_splits = 1", "aug_splits = 1 is the clean image alone"),
    ("cutmix_minmax = [0.5, 0.2]", "cutmix_minmax must be"),
    ("mix_off_epoch = 2", "set train.mix too"),
    ('mix_mode = "row"', "'batch', 'pair' or 'elem'"),
    ('augment = "rand-q9"', "Unknown RandAugment config section"),
])
def test_bad_data_recipe_values_are_one_line_errors(write_suite, extra, fragment):
    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(extra)))  # the TINY base ends inside its [train] table
    assert fragment in str(e.value) and e.value.key.startswith("train") and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------------------- augmentation
def test_timm_policy_strings_build_timms_transforms_and_are_seeded():
    from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment

    for spec, kind in (("rand-m9-mstd0.5-inc1", RandAugment), ("augmix-m5-w4-d2", AugMixAugment),
                       ("original", AutoAugment)):
        t = build_augment(spec, 32)
        assert isinstance(t, TimmPolicy) and isinstance(t.policy, kind)
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t = build_augment(["rand-m9-n3-mstd0.5", "hflip"], 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(3), random.seed(3), np.random.seed(3)
        outs.append(t(x))
    assert outs[0].dtype == torch.uint8 and outs[0].shape == x.shape
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m10-n2-inc1"])
def test_timm_policies_train_on_current_pillow_where_posterize_keeps_no_bit(spec):
    """Pillow 13 refuses posterize with 0 bits, which the top of timm's increasing posterize asks for (m10 each
    time the op is drawn, m9 with mstd0.5 on ~0.1% of images): bench's guard gives black there, as Pillow did."""
    import PIL
    from PIL import ImageOps
    from timm.data.auto_augment import posterize
    from torchvision.transforms import v2

    image = v2.functional.to_pil_image(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8))
    if int(PIL.__version__.split(".")[0]) >= 13:  # the edge the guard is for (older Pillow gave black)
        with pytest.raises(ValueError, match="bits must be"):
            ImageOps.posterize(image, 0)
    assert posterize(image, 8) is image
    t = build_augment(spec, 16)
    random.seed(0)
    xs = torch.randint(0, 256, (20_000, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    black = sum(bool(t(x).eq(0).all()) for x in xs)  # every image through it; a refused op would raise
    assert black >= (100 if spec.startswith("rand-m10") else 1)


def test_grayscale_and_blur_ops():
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = build_augment("grayscale:1.0", 32)(x)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2]) and grey.shape == x.shape
    blurred = build_augment([{"op": "blur", "p": 1.0, "sigma_min": 2.0, "sigma_max": 3.0, "kernel": 5}], 32)(x).float()
    # a blur keeps the mean and smooths: neighbouring pixels differ less
    assert abs(blurred.mean() - x.float().mean()) < 3
    assert (blurred.diff(dim=-1).abs().mean() < 0.5 * x.float().diff(dim=-1).abs().mean())
    assert torch.equal(build_augment([{"op": "blur", "p": 0.0}], 32)(x), x)


# ----------------------------------------------------------------------------------------- a suite of them
RECIPE_CELLS = """
[[cells]]
label = "augmix-jsd"
"train.augment" = "augmix-m3-w2-d1"
"train.aug_splits" = 3
"train.loss" = "jsd"
"train.jsd_alpha" = 6.0

[[cells]]
label = "bce-mix-elem"
"train.loss" = "bce"
"train.bce_target_threshold" = 0.2
"train.mix" = "cutmix_mixup"
"train.mix_mode" = "elem"
"train.cutmix_alpha" = 0.5
"train.mix_off_epoch" = 1
"train.augment" = ["rand-m7-mstd0.5", "grayscale", "blur"]
"""


def test_data_recipes_run_through_a_suite_and_are_recorded(write_suite, tmp_path):
    path = write_suite(RECIPE_CELLS)
    planned = api.plan(path, check=False)
    cells = planned.cells
    summary = api.run(planned, results=tmp_path / "r", device="cpu", progress=LogProgress())
    assert not summary.failed, summary.failed
    by = {c.label: json.loads((summary.suite_dir / c.id / "result.json").read_text()) for c in cells}
    jsd, bce = by["augmix-jsd"]["train"], by["bce-mix-elem"]["train"]
    assert jsd["aug_splits"] == 3 and jsd["mix"] is None
    # the batch held three views of each image: the loop saw three times the training images
    cell = next(c for c in cells if c.label == "augmix-jsd")
    history = pd.read_csv(summary.suite_dir / cell.id / "history.csv")
    train_images = by["augmix-jsd"]["data"]["images"]["train"]
    assert history["train_images"].tolist() == [jsd["train_images_per_epoch"]] * 2 == [3 * train_images] * 2
    assert bce["mix"] == {"mixup_alpha": 1.0, "cutmix_alpha": 0.5, "mode": "elem", "prob": 1.0,
                          "switch_prob": 0.5, "off_epoch": 1}
    for result in by.values():
        assert math.isfinite(result["metrics"]["test"]["top1_error"])


# ----------------------------------------------------------------------------------------- model.kwargs
def test_drop_path_rate_reaches_every_block_of_a_timm_resnet():
    model = create_model("timm:resnet18", 3, 32, kwargs={"drop_path_rate": 0.2})
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]  # timm leaves a rate of 0 as None
    # timm's linear rule: block i of n drops with probability rate x i / (n - 1)
    assert rates == pytest.approx([0.2 * i / 7 for i in range(8)])
    plain = create_model("timm:resnet18", 3, 32)
    assert all(not hasattr(b.drop_path, "drop_prob") for layer in (plain.layer1, plain.layer4) for b in layer)


def test_model_kwargs_as_a_grid_axis_share_initial_weights_unless_they_change_the_network(write_suite):
    cells = expand(load_suite(write_suite("""
        [model]
        arch = "timm:resnet18"
        [grid]
        "model.kwargs.drop_path_rate" = [0.0, 0.1]
        "model.kwargs.stem_type" = ["", "deep"]
    """)))
    assert len(cells) == 4
    keys = {(c.config.model.kwargs["drop_path_rate"], c.config.model.kwargs["stem_type"]): init_key(c.config, 4)
            for c in cells}
    assert keys[(0.0, "")] == keys[(0.1, "")] and keys[(0.0, "deep")] == keys[(0.1, "deep")]
    assert keys[(0.0, "")] != keys[(0.0, "deep")]  # a deep stem has other layers: other initial weights


@pytest.mark.parametrize(("arch", "accepted"), [("timm:resnet18", "drop_path_rate"),
                                                ("tv:resnet18", "zero_init_residual"),
                                                ("bench:small_cnn", "width")])
def test_an_unknown_model_kwarg_is_one_line_listing_what_the_architecture_accepts(write_suite, arch, accepted):
    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(f'[model]\narch = "{arch}"\nkwargs = {{drop_pth_rate = 0.1}}\n')))
    text = str(e.value)
    assert e.value.key == "model.kwargs" and "drop_pth_rate" in text and accepted in text and "\n" not in text


# ----------------------------------------------------------------------------------------- split folders
def _folder(root, splits: dict[str, int]):
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("name", ["val", "validation", "valid"])
def test_validation_and_valid_folders_are_the_val_split(tmp_path, name):
    root = _folder(tmp_path / "d", {"train": 10, name: 3})
    samples = read_source(DataConfig(source="folder", root=str(root)))
    assert sorted(set(samples.given)) == ["train", "val"]
    assert sum(samples.given == "val") == 6


def test_two_validation_folders_are_refused(tmp_path):
    root = _folder(tmp_path / "d", {"train": 4, "val": 2, "validation": 2})
    with pytest.raises(UserError) as e:
        read_source(DataConfig(source="folder", root=str(root)))
    assert e.value.key == "data.root" and "val/ and validation/" in str(e.value)


def test_a_test_split_carved_from_train_is_said_and_recorded(tmp_path, write_suite, cli):
    root = _folder(tmp_path / "d", {"train": 20, "validation": 4})
    cfg = DataConfig(source="folder", root=str(root), image_size=16)
    prepared = prepare(cfg, 0, tmp_path / "splits")
    origin = prepared.info["origin"]
    assert origin["val"] == "the source's val split"
    assert origin["test"].startswith("carved from the source's train split (15%")
    assert prepared.info["images"] == {"train": 34, "val": 8, "test": 6}
    path = write_suite(f'[suite]\nname = "f"\n[data]\nsource = "folder"\nroot = "{root}"\nimage_size = 16\n',
                       base="", name="folder.toml")
    code, out, err = cli("plan", path, "--no-data")
    # rich wraps the line at 80 columns wherever the tmp path's length (an xdist worker's is longer) puts it
    assert code == 0 and "test is carved from the source's train split (15% of its images" in " ".join(err.split())
