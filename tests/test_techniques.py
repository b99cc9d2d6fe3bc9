"""Each training technique does what it says: losses, class weights, samplers, batch mixing, schedules,
augmentation ops, and one-line errors for unknown names (parametrized over the registries)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.config import CellConfig, TrainConfig
from bench.errors import UserError
from bench.suite import check_names
from bench.techniques import AUGMENT_OPS, AUGMENTS, LOSSES, MIXES, SAMPLERS, SCHEDULES, build_augment
from bench.techniques.augment import parse_item
from bench.techniques.losses import class_weights, complement_entropy, focal_loss
from bench.techniques.optimizers import build_optimizer
from bench.techniques.schedules import with_warmup


def logits_and_labels(n: int = 8, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.randint(0, k, (n,), generator=g)


# ------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"jsd"}))  # jsd: never mixed (aug_splits excludes mix)
def test_every_loss_takes_hard_and_soft_targets(name):
    logits, y = logits_and_labels()
    loss_fn = LOSSES[name](TrainConfig(loss=name, label_smoothing=0.1), [10, 20, 30, 40, 50])
    hard = loss_fn(logits, y)
    soft = loss_fn(logits, F.one_hot(y, 5).float())
    assert hard.ndim == 0 and torch.isfinite(hard)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)  # a one-hot distribution is the label
    logits.requires_grad_(True)
    loss_fn(logits, y).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_with_gamma_0_and_no_alpha_is_cross_entropy(smoothing):
    logits, y = logits_and_labels(32)
    ce = F.cross_entropy(logits, y, label_smoothing=smoothing)
    assert torch.allclose(focal_loss(logits, y, 0.0, None, smoothing), ce, rtol=1e-6, atol=1e-7)
    soft = torch.softmax(torch.randn(32, 5), 1)
    assert torch.allclose(focal_loss(logits, soft, 0.0), F.cross_entropy(logits, soft), rtol=1e-6, atol=1e-7)


def test_focal_down_weights_easy_examples_by_hand():
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4]]))
    y = torch.tensor([0, 0])
    expected = -((0.1 ** 2) * math.log(0.9) + (0.8 ** 2) * math.log(0.2)) / 2
    assert focal_loss(logits, y, 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(logits, y, 2.0, alpha=0.25).item() == pytest.approx(0.25 * expected, rel=1e-5)


def test_class_weights_by_hand():
    assert class_weights([10, 5, 1], "inverse").tolist() == pytest.approx(
        [3 * w / (0.1 + 0.2 + 1.0) for w in (0.1, 0.2, 1.0)])
    assert class_weights([4, 1], "sqrt_inverse").tolist() == pytest.approx([2 * 0.5 / 1.5, 2 * 1 / 1.5])
    # effective number (Cui et al.): (1 - b) / (1 - b^n), b = 0.5: n=1 -> 1, n=3 -> 0.5/0.875
    raw = [1.0, 0.5 / 0.875]
    assert class_weights([1, 3], "effective", beta=0.5).tolist() == pytest.approx([2 * r / sum(raw) for r in raw])


def test_weighted_ce_weights_each_sample_by_its_class():
    logits, y = logits_and_labels(16, 3)
    counts = [30, 10, 5]
    cfg = TrainConfig(loss="weighted_ce", class_weights="inverse")
    w = class_weights(counts, "inverse")
    expected = (w[y] * F.cross_entropy(logits, y, reduction="none")).mean()
    assert LOSSES["weighted_ce"](cfg, counts)(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_complement_entropy_by_hand():
    # p = (0.5, 0.25, 0.25), truth 0: the complement is (0.5, 0.5), sum q log q = -ln 2; / (N=1 * K=3)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert complement_entropy(logits, torch.tensor([0])).item() == pytest.approx(-math.log(2) / 3, rel=1e-5)
    # a peaked complement has higher (less negative) value: the term rewards flat complements
    peaked = torch.log(torch.tensor([[0.5, 0.45, 0.05]]))
    assert complement_entropy(peaked, torch.tensor([0])) > complement_entropy(logits, torch.tensor([0]))
    cfg = TrainConfig(loss="complement", complement_weight=0.5)
    total = LOSSES["complement"](cfg, [1, 1, 1])(logits, torch.tensor([0]))
    assert total.item() == pytest.approx(math.log(2) + 0.5 * -math.log(2) / 3, rel=1e-5)


# ------------------------------------------------------------------------------------------ samplers
LABELS = torch.tensor([0] * 200 + [1] * 50 + [2] * 8)


def drawn(name: str, seed: int = 0, epochs: int = 20) -> list[int]:
    sampler = SAMPLERS[name](LABELS, seed)
    if sampler is None:
        return LABELS.tolist() * epochs
    return [int(LABELS[i]) for _ in range(epochs) for i in sampler]


@pytest.mark.parametrize(("name", "power"), [("uniform", 1.0), ("balanced", 0.0), ("sqrt", 0.5)])
def test_sampler_class_proportions(name, power):
    assert set(SAMPLERS) == {"uniform", "balanced", "sqrt"}  # a new sampler needs its row here
    counts = Counter(drawn(name))
    total = sum(counts.values())
    assert total == 20 * len(LABELS)
    expected = torch.bincount(LABELS).double() ** power
    expected = expected / expected.sum()
    for c in range(3):
        assert counts[c] / total == pytest.approx(float(expected[c]), abs=0.02), (name, counts)


def test_samplers_are_seeded():
    assert drawn("balanced", 0, 1) == drawn("balanced", 0, 1)
    assert drawn("balanced", 0, 1) != drawn("balanced", 1, 1)


# ------------------------------------------------------------------------------------------ mixing
def two_images(n: int = 2):
    """Image i is filled with the value i, so every output pixel says which image it came from."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_label_weights_equal_the_pasted_area(seed):
    np.random.seed(seed)  # timm's Mixup draws from numpy's generator, which the cell seed sets
    mix = MIXES["cutmix"](TrainConfig(mix="cutmix"), 2)
    x, y = two_images()
    out, target = mix(x, y)
    pasted = (out[0] == 1).float().mean().item()  # image 0 with pixels of image 1
    assert target[0].tolist() == pytest.approx([1 - pasted, pasted], abs=1e-6)
    assert target.sum(1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_mixup_blends_images_and_labels_with_the_same_lam(seed):
    np.random.seed(seed)
    mix = MIXES["mixup"](TrainConfig(mix="mixup", mix_alpha=0.4), 2)
    out, target = mix(*two_images())
    other = out[0].unique()
    assert len(other) == 1  # a uniform blend of two flat images
    assert target[0, 1].item() == pytest.approx(other.item(), abs=1e-6)  # 1 - lam of image 1
    assert 0 < other.item() < 1  # mixed: some of each image


@pytest.mark.parametrize("name", sorted(n for n in MIXES if n != "none"))
def test_mix_probability_zero_leaves_the_batch(name):
    mix = MIXES[name](TrainConfig(mix=name, mix_prob=0.0), 2)
    x, y = two_images()
    out, target = mix(x.clone(), y)
    assert torch.equal(out, x) and torch.equal(target, F.one_hot(y, 2).float())


def test_cutmix_and_mixup_take_their_own_alphas():
    """cutmix_alpha is cutmix's Beta, mix_alpha mixup's: mixup at alpha 50 blends near half and half, and
    a tiny cutmix alpha draws lam near 0 or 1, so some boxes are (almost) empty, which Beta(50, 50) never
    draws (its boxes hold an eighth of the image or more)."""
    np.random.seed(0)
    cfg = TrainConfig(mix="cutmix_mixup", mix_alpha=50.0, cutmix_alpha=0.01, mix_switch_prob=0.5)
    mix = MIXES["cutmix_mixup"](cfg, 2)
    kinds = {"cutmix": [], "mixup": []}
    for _ in range(40):
        out, target = mix(*two_images())
        kinds["mixup" if len(out[0].unique()) == 1 and 0 < out[0, 0, 0, 0] < 1 else "cutmix"].append(
            target[0, 1].item())
    assert kinds["mixup"] and kinds["cutmix"]  # both, switched at random
    assert all(abs(w - 0.5) < 0.15 for w in kinds["mixup"])
    assert any(w < 0.05 for w in kinds["cutmix"])


def test_elem_mode_draws_a_ratio_per_image():
    np.random.seed(0)
    mix = MIXES["mixup"](TrainConfig(mix="mixup", mix_mode="elem"), 8)
    out, target = mix(*two_images(8))
    weights = target.max(1).values
    assert len(set(weights.tolist())) > 2  # one ratio per image (pairs i, n-1-i), not one for the batch
    batch = MIXES["mixup"](TrainConfig(mix="mixup"), 8)
    np.random.seed(0)
    _, target = batch(*two_images(8))
    assert len(set(target.max(1).values.tolist())) == 1


def test_an_odd_batch_mixes_all_but_its_last_image():
    np.random.seed(1)
    mix = MIXES["mixup"](TrainConfig(mix="mixup"), 3)
    x, y = two_images(3)
    out, target = mix(x.clone(), y)
    assert torch.equal(out[2], x[2]) and target[2].tolist() == [0, 0, 1]
    assert not torch.equal(out[0], x[0]) and target[:2].sum(1).tolist() == pytest.approx([1, 1])


def test_mixing_stops_after_mix_off_epoch():
    mix = MIXES["mixup"](TrainConfig(mix="mixup", mix_off_epoch=2), 2)
    x, y = two_images()
    for epoch, mixed in ((1, True), (2, True), (3, False)):
        mix.set_epoch(epoch)
        np.random.seed(0)
        out, target = mix(x.clone(), y)
        assert torch.equal(out, x) is not mixed
        assert torch.equal(target, F.one_hot(y, 2).float()) is not mixed


# ------------------------------------------------------------------------------------------ schedules
# name -> (train config overrides, [(step, expected multiplier)]) at 10 steps/epoch, 10 epochs
SCHEDULE_POINTS = {
    "constant": ({}, [(0, 1.0), (99, 1.0)]),
    "step": ({"step_size": 3, "gamma": 0.1}, [(29, 1.0), (30, 0.1), (59, 0.1), (60, 0.01)]),
    "multistep": ({"milestones": [2, 5], "gamma": 0.5}, [(19, 1.0), (20, 0.5), (49, 0.5), (50, 0.25)]),
    "cosine": ({"min_lr": 0.001}, [(0, 1.0), (50, 0.55), (100, 0.1)]),
    # as torch's OneCycleLR: peak at step pct_start * total - 1, floor at the last (tests/test_recipes_optim.py)
    "onecycle": ({"pct_start": 0.3}, [(0, 1 / 25), (29, 1.0), (99, 1 / 25e4), (100, 1 / 25e4)]),
    "restarts": ({"min_lr": 0.001, "cycle_epochs": 2, "restart_mult": 2},
                 [(0, 1.0), (10, 0.55), (20, 1.0), (40, 0.55), (60, 1.0)]),
    "poly": ({"min_lr": 0.001, "poly_power": 2.0}, [(0, 1.0), (50, 0.1 + 0.9 * 0.25), (100, 0.1)]),
    "plateau": ({}, [(0, 1.0), (99, 1.0)]),  # lowered by validation figures only (test_recipes_optim.py)
    "cyclical": ({"min_lr": 0.001, "cycle_epochs": 2}, [(0, 0.1), (5, 0.55), (10, 1.0), (20, 0.1), (30, 1.0)]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_curve_at_known_steps(name):
    assert name in SCHEDULE_POINTS, f"schedule '{name}' needs expected points in SCHEDULE_POINTS"
    overrides, points = SCHEDULE_POINTS[name]
    cfg = TrainConfig(schedule=name, lr=0.01, epochs=10, **overrides)
    multiplier = SCHEDULES[name](cfg, 10, 100)
    for step, expected in points:
        assert multiplier(step) == pytest.approx(expected, rel=1e-6, abs=1e-9), (name, step)


def test_triangular2_halves_the_height_every_cycle():
    cfg = TrainConfig(schedule="cyclical", cycle_mode="triangular2", lr=0.01, min_lr=0.001, cycle_epochs=2)
    m = SCHEDULES["cyclical"](cfg, 10, 100)
    assert [m(10), m(30), m(50)] == pytest.approx([1.0, 0.1 + 0.9 / 2, 0.1 + 0.9 / 4])


def test_warmup_multiplies_the_schedule_in_the_optimizer():
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(schedule="step", step_size=1, gamma=0.5, warmup_epochs=1, lr=0.1, epochs=3)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.05) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.05)  # epoch 2 of the step schedule, warmup over
    assert with_warmup(lambda s: 1.0, 0)(0) == 1.0


# ------------------------------------------------------------------------------------------ augmentation
IMAGE = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(AUGMENT_OPS) + sorted(AUGMENTS))
def test_every_augment_keeps_a_uint8_image_of_image_size_or_its_input(name):
    transform = build_augment(name, 16)
    if name == "none":
        assert transform is None
        return
    torch.manual_seed(0)
    out = transform(IMAGE)
    assert out.dtype == torch.uint8 and out.shape[0] == 3 and out.shape[1] == out.shape[2] in (16, 24)


def test_augment_list_and_inline_table_are_the_same_ops():
    assert parse_item("rotate:15") == parse_item({"op": "rotate", "degrees": 15}) == ("rotate", {"degrees": 15})
    a, b = build_augment(["hflip:1", "rotate:30"], 24), build_augment([{"op": "hflip", "p": 1}, "rotate:30"], 24)
    torch.manual_seed(3)
    out_a = a(IMAGE)
    torch.manual_seed(3)
    assert torch.equal(out_a, b(IMAGE))
    torch.manual_seed(4)
    assert not torch.equal(out_a, a(IMAGE))  # random: another draw rotates otherwise


def test_vertical_flip_op_flips():
    assert torch.equal(build_augment("vflip:1.0", 24)(IMAGE), IMAGE.flip(1))


@pytest.mark.parametrize(("spec", "fragment"), [
    ("mixup2", "unknown augment 'mixup2'; valid choices: autoaugment"),
    (["rotate:abc"], "degrees must be a number"),
    ([{"op": "rotate", "deg": 3}], "has no parameter 'deg'; its parameters: degrees"),
    (["hflip:2"], "interval [0.0, 1.0]"),
    (["crop_flip:3"], "takes no parameters"),
    (["trivialaugment:3"], "takes no value"),
    ([{"degrees": 3}], "needs op"),
])
def test_bad_augment_is_a_clear_error(spec, fragment):
    with pytest.raises(UserError) as e:
        check_names(CellConfig(train=TrainConfig(augment=spec)))
    assert e.value.key == "train.augment" and fragment in str(e.value)


# ------------------------------------------------------------------------------------------ unknown names
UNKNOWN = [("optimizer", '"qqq"', "adabelief"), ("schedule", '"qqq"', "cyclical"), ("loss", '"qqq"', "focal"),
           ("sampler", '"qqq"', "balanced"), ("mix", '"qqq"', "cutmix"), ("augment", '["hflip", "qqq:5"]', "rotate"),
           ("tta", '["hflip", "qqq:2"]', "shift")]


@pytest.mark.parametrize(("key", "value", "valid"), UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unknown_technique_is_one_line_exit_2_listing_valid_names(write_suite, cli, tmp_path, key, value, valid):
    from bench.techniques import REGISTRIES

    assert set(REGISTRIES) <= {u[0] for u in UNKNOWN}  # every registry is covered here
    path = write_suite(f"[grid]\n\"train.{key}\" = [{value}]\n")
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f'grid."train.{key}"' in lines[0] and "unknown" in lines[0] and valid in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_a_grid_axis_holds_presets_op_lists_and_inline_tables(write_suite):
    from bench.config import load_suite
    from bench.suite import expand

    path = write_suite('[grid]\n"train.augment" = ["none", "crop_flip", ["hflip", "rotate:15"], '
                       '[{op = "rrc", min_scale = 0.35}, "erasing:0.25"]]\n')
    cells = expand(load_suite(path))
    assert [c.config.train.augment for c in cells] == [
        "none", "crop_flip", ["hflip", "rotate:15"], [{"op": "rrc", "min_scale": 0.35}, "erasing:0.25"]]
    assert len({c.id for c in cells}) == 4 and len({c.label for c in cells}) == 4


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"offline": 1}, "offline = 1 is the original set alone"),
    ({"offline": 3}, "offline augmentation needs train.augment"),
    ({"min_lr": 0.1, "lr": 0.01}, "min_lr (0.1) must be <= lr"),
    ({"schedule": "multistep"}, "needs milestones"),
])
def test_inconsistent_technique_settings_are_clear_errors(kw, fragment):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kw)
    assert fragment in str(e.value)


@pytest.mark.parametrize(("views", "fragment"), [(["rotate:x"], "not a number"), (["hflip:2"], "takes no value")])
def test_bad_tta_views_are_clear_errors(views, fragment):
    with pytest.raises(UserError) as e:
        check_names(CellConfig(train=TrainConfig(tta=views)))
    assert e.value.key == "train.tta" and fragment in str(e.value)
