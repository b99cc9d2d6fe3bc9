"""Optimizers, parameter groups and schedules through timm's (and torch's) own implementations: every timm
optimizer trains through build_optimizer, layer-wise lr decay and the no-decay split are timm's groups,
the schedules are timm's curves (or torch's, for onecycle, cyclical and plateau), and bench's four original
optimizers and earlier schedules keep their numbers."""

from __future__ import annotations

import json
import math

import pytest
import timm
import timm.optim
import torch
from timm.models import group_parameters
from timm.scheduler import StepLRScheduler, create_scheduler_v2
from torch import nn

from bench import api
from bench.config import TrainConfig, load_suite
from bench.errors import UserError
from bench.models.builtins import SmallCNN
from bench.progress import LogProgress
from bench.suite import expand
from bench.techniques import OPTIMIZERS, SCHEDULES
from bench.techniques.optimizers import build_optimizer
from bench.techniques.schedules import with_warmup
from bench.train import fit
from tests.support import CPU, scripted_val_errors, tiny_loaders


def lrs(cfg: TrainConfig, steps_per_epoch: int, model: nn.Module | None = None, steps: int | None = None):
    """The first group's lr at every step of the run, as bench's training loop sees them."""
    optimizer, scheduler = build_optimizer(model or nn.Linear(2, 2), cfg, steps_per_epoch)
    out = []
    for _ in range(steps or steps_per_epoch * cfg.epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def timm_lrs(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for t in range(steps):
        scheduler.step_update(t)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def sgd(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


# ----------------------------------------------------------------------------------------- optimizers
def train_steps(model: nn.Module, optimizer, scheduler, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_timm_optimizer_trains_through_build_optimizer(name, monkeypatch):
    # kron torch.compiles its preconditioner for every tensor shape: about a minute on a CPU for this model.
    # Uncompiled it is the same function; tests/test_registries.py runs it compiled.
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.01, wd_norm_bias=False, schedule="cosine",
                      epochs=2)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=3)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight")}
    train_steps(model, optimizer, scheduler)  # more than one: ADOPT's first step only sets its second moment
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), name
    assert all(torch.isfinite(p).all() for p in model.parameters())


# bench's four optimizers as they were built before timm's factory: their torch constructors
BEFORE = {
    "sgd": lambda g, c: torch.optim.SGD(g, lr=c.lr, momentum=c.momentum,
                                        nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay),
    "adam": lambda g, c: torch.optim.Adam(g, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda g, c: torch.optim.AdamW(g, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda g, c: torch.optim.RMSprop(g, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def cosine_before(cfg, steps_per_epoch: int, total: int):
    """bench's hand-written cosine before timm's: half a cosine from 1 to min_lr/lr over the run."""
    floor = cfg.min_lr / cfg.lr
    return lambda s: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(s / total, 0.0), 1.0)))


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_four_original_optimizers_train_to_the_same_bits_as_before(name):
    cfg = TrainConfig(optimizer=name, lr=0.01, backbone_lr=0.001, weight_decay=1e-3, nesterov=True,
                      schedule="cosine", min_lr=0.0001, warmup_epochs=1, epochs=3)
    torch.manual_seed(0)
    new = SmallCNN(3, width=4)
    old = SmallCNN(3, width=4)
    old.load_state_dict(new.state_dict())
    optimizer, scheduler = build_optimizer(new, cfg, steps_per_epoch=2)
    train_steps(new, optimizer, scheduler, steps=6)
    head = {id(p) for p in old.head.parameters()}
    groups = [{"params": [p for p in old.parameters() if id(p) not in head], "lr": cfg.backbone_lr},
              {"params": list(old.head.parameters()), "lr": cfg.lr}]
    reference = BEFORE[name](groups, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, with_warmup(cosine_before(cfg, 2, 6), 2))
    train_steps(old, reference, schedule, steps=6)
    new_state, old_state = new.state_dict(), old.state_dict()
    assert all(torch.equal(new_state[k], old_state[k]) for k in new_state)


def test_rmsprop_alpha_reaches_torchs_rmsprop():
    layer = nn.Linear(3, 2)
    cfg = TrainConfig(optimizer="rmsprop", rmsprop_alpha=0.9, momentum=0.0)
    optimizer, _ = build_optimizer(layer, cfg, 1)
    assert type(optimizer) is torch.optim.RMSprop and optimizer.param_groups[0]["alpha"] == 0.9
    optimizer, _ = build_optimizer(layer, TrainConfig(optimizer="rmsprop"), 1)
    assert optimizer.param_groups[0]["alpha"] == 0.99  # torch's default, as bench always ran (timm's is 0.9)
    optimizer, _ = build_optimizer(layer, TrainConfig(optimizer="rmsproptf"), 1)
    assert optimizer.param_groups[0]["alpha"] == 0.9  # timm's TF-style RMSprop keeps timm's default


def test_betas_of_the_wrong_length_name_the_key():
    with pytest.raises(UserError) as e:
        build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="adan", betas=(0.9, 0.99)), 1)
    assert e.value.key == "train.betas" and "adan takes 3 betas" in str(e.value)
    optimizer, _ = build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="sgd", betas=(0.9, 0.99)), 1)
    assert "betas" not in optimizer.defaults  # ignored by an optimizer without them, as timm's factory does


# ----------------------------------------------------------------------------------------- parameter groups
def test_wd_norm_bias_false_puts_biases_and_norm_weights_at_zero_decay():
    model = SmallCNN(3, width=4)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.05, wd_norm_bias=False, backbone_lr=0.001, lr=0.01)
    optimizer, _ = build_optimizer(model, cfg, 1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    norm_and_bias = {id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False)
                     if isinstance(m, nn.BatchNorm2d) or n == "bias"}
    assert ids["backbone/no_decay"] | ids["head/no_decay"] == norm_and_bias
    assert ids["head"] == {id(model.head.weight)} and ids["head/no_decay"] == {id(model.head.bias)}
    order = ("backbone", "backbone/no_decay", "head", "head/no_decay")
    assert [groups[n]["weight_decay"] for n in order] == [0.05, 0.0, 0.05, 0.0]
    assert [groups[n]["lr"] for n in order] == [0.001, 0.001, 0.01, 0.01]
    optimizer, _ = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.05), 1)
    assert [g["name"] for g in optimizer.param_groups] == ["all"]  # the default decays everything, as before
    assert optimizer.param_groups[0]["weight_decay"] == 0.05


def tiny_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3)


def test_wd_norm_bias_false_also_spares_the_models_own_no_weight_decay_list():
    model = tiny_vit()
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.05, wd_norm_bias=False)
    optimizer, _ = build_optimizer(model, cfg, 1)
    zero = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {id(model.pos_embed), id(model.cls_token)} <= zero


def resnet10t() -> nn.Module:
    return timm.create_model("resnet10t", num_classes=3)


@pytest.mark.parametrize(("make", "wd_norm_bias"), [(resnet10t, True), (tiny_vit, False)],
                         ids=["resnet10t", "vit"])
def test_layer_decay_gives_timms_per_layer_lr(make, wd_norm_bias):
    model = make()
    cfg = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.05, layer_decay=0.7,
                      wd_norm_bias=wd_norm_bias)
    optimizer, _ = build_optimizer(model, cfg, 1)
    got = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    # timm's own factory on the whole model: its groups carry lr_scale for timm's schedulers to apply
    reference = timm.optim.create_optimizer_v2(model, "adamw", lr=0.1, weight_decay=0.05, layer_decay=0.7,
                                               filter_bias_and_bn=not wd_norm_bias)
    want = {id(p): (0.1 * g["lr_scale"], g["weight_decay"])
            for g in reference.param_groups for p in g["params"]}
    assert got.keys() == want.keys() and len(got) == len(list(model.parameters()))
    assert all(got[k] == pytest.approx(want[k]) for k in got)
    # and timm's formula: lr x layer_decay^(deepest layer - the parameter's layer), the head at lr
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layers.values())
    for name, p in model.named_parameters():
        assert got[id(p)][0] == pytest.approx(0.1 * 0.7 ** (top - layers.get(name, top))), name
    assert all(got[id(p)][0] == pytest.approx(0.1) for p in model.get_classifier().parameters())
    assert len({round(lr, 12) for lr, _ in got.values()}) == top + 1
    names = [g["name"] for g in optimizer.param_groups]
    assert "depth_0" in names and f"depth_{top}" in names


def test_layer_decay_needs_a_model_with_layers_and_excludes_backbone_lr():
    with pytest.raises(UserError) as e:
        build_optimizer(SmallCNN(3, width=4), TrainConfig(layer_decay=0.8), 1)
    assert e.value.key == "train.layer_decay" and "group_matcher" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="layer_decay and backbone_lr are exclusive"):
        TrainConfig(layer_decay=0.8, backbone_lr=0.001)


def test_the_schedule_scales_every_layer_decay_group():
    model = resnet10t()
    cfg = TrainConfig(lr=0.1, layer_decay=0.5, schedule="cosine", epochs=2)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [g["initial_lr"] * 0.5 for g in optimizer.param_groups])  # half-way down the cosine


# ----------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("min_lr", "steps_per_epoch", "epochs"),
                         [(0.0, 10, 10), (0.001, 7, 3), (0.0003, 1, 13)])
def test_cosine_keeps_its_numbers_bit_for_bit(min_lr, steps_per_epoch, epochs):
    cfg = TrainConfig(schedule="cosine", lr=0.01, min_lr=min_lr, epochs=epochs)
    total = steps_per_epoch * epochs
    new, old = SCHEDULES["cosine"](cfg, steps_per_epoch, total), cosine_before(cfg, steps_per_epoch, total)
    assert [new(s) for s in range(total + 2)] == [old(s) for s in range(total + 2)]


def test_step_is_timms_step_schedule_and_multistep_is_torchs():
    cfg = TrainConfig(schedule="step", step_size=3, gamma=0.3, epochs=10)
    optimizer = sgd(1.0)
    timm_step = StepLRScheduler(optimizer, decay_t=3 * 7, decay_rate=0.3, t_in_epochs=False)
    assert [SCHEDULES["step"](cfg, 7, 70)(s) for s in range(70)] == timm_lrs(timm_step, optimizer, 70)
    # timm's MultiStepLRScheduler decays one update early (it bisects at t + 1): bench keeps torch's epochs
    cfg = TrainConfig(schedule="multistep", milestones=[2, 5, 6], gamma=0.5, epochs=10)
    optimizer = sgd(1.0)
    torch_multi = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 5, 6], gamma=0.5)
    per_epoch = []
    for _ in range(10):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        torch_multi.step()
    multiplier = SCHEDULES["multistep"](cfg, 7, 70)
    assert [multiplier(s) for s in range(70)] == pytest.approx([lr for lr in per_epoch for _ in range(7)])


# (bench settings, timm's create_scheduler_v2 settings): bench's epochs are timm's scheduled epochs + cooldown
TIMM_SCHEDULES = {
    "cosine+cooldown": ({"schedule": "cosine", "epochs": 10, "cooldown_epochs": 2},
                        {"sched": "cosine", "num_epochs": 8, "cooldown_epochs": 2}),
    "restarts": ({"schedule": "restarts", "epochs": 12, "cycle_epochs": 3},
                 {"sched": "cosine", "num_epochs": 3, "cycle_limit": 4, "cycle_decay": 1.0}),
    "restarts+mult+decay+cooldown": (
        {"schedule": "restarts", "epochs": 8, "cycle_epochs": 2, "restart_mult": 2, "restart_decay": 0.5,
         "cooldown_epochs": 2},
        {"sched": "cosine", "num_epochs": 2, "cycle_mul": 2, "cycle_decay": 0.5, "cycle_limit": 2,
         "cooldown_epochs": 2}),
    "poly": ({"schedule": "poly", "epochs": 6, "poly_power": 2.0},
             {"sched": "poly", "num_epochs": 6, "decay_rate": 2.0}),
    "poly+cooldown": ({"schedule": "poly", "epochs": 9, "poly_power": 0.5, "cooldown_epochs": 3},
                      {"sched": "poly", "num_epochs": 6, "decay_rate": 0.5, "cooldown_epochs": 3}),
}


@pytest.mark.parametrize("case", sorted(TIMM_SCHEDULES))
def test_restarts_poly_and_cooldown_follow_timms_scheduler(case):
    ours, theirs = TIMM_SCHEDULES[case]
    cfg = TrainConfig(lr=0.1, min_lr=0.001, **ours)
    steps = 5 * cfg.epochs
    optimizer = sgd(0.1)
    scheduler, epochs = create_scheduler_v2(optimizer, min_lr=0.001, warmup_epochs=0, step_on_epochs=False,
                                            updates_per_epoch=5, **theirs)
    assert epochs == cfg.epochs  # timm's own count of the run: its schedule, cycles and cooldown
    assert lrs(cfg, 5) == pytest.approx(timm_lrs(scheduler, optimizer, steps), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("steps_per_epoch", "epochs", "pct_start"),
                         [(10, 10, 0.3), (7, 3, 0.25), (5, 4, 0.5), (1, 50, 0.1), (13, 2, 0.9)])
def test_onecycle_is_torchs_one_cycle_lr_at_every_step(steps_per_epoch, epochs, pct_start):
    cfg = TrainConfig(schedule="onecycle", lr=0.05, pct_start=pct_start, epochs=epochs)
    total = steps_per_epoch * epochs
    optimizer = sgd(0.05)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=total,
                                                    pct_start=pct_start, cycle_momentum=False)
    want = []
    for _ in range(total):
        want.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert lrs(cfg, steps_per_epoch) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
def test_cyclical_is_torchs_cyclic_lr_at_every_step(mode):
    cfg = TrainConfig(schedule="cyclical", lr=0.1, min_lr=0.01, cycle_epochs=2, cycle_mode=mode, epochs=9)
    optimizer = sgd(0.1)
    reference = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.01, max_lr=0.1, step_size_up=5,
                                                   mode=mode, cycle_momentum=False)
    want = []
    for _ in range(45):
        want.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert lrs(cfg, 5) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(monkeypatch):
    # best 0.4 at epoch 2; epochs 3 and 4 do not improve: x0.5 from epoch 5 on; 0.3 at 5, then 6 and 7 flat
    scripted_val_errors(monkeypatch, [0.5, 0.4, 0.45, 0.4, 0.3, 0.35, 0.3, 0.2])
    torch.manual_seed(0)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, schedule="plateau", plateau_patience=2, gamma=0.5, epochs=8)
    result = fit(SmallCNN(3, width=4), tiny_loaders(), cfg, CPU, class_counts=[16, 16, 16])
    assert [r["lr"] for r in result.history] == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])


def test_plateau_follows_the_monitor_its_mode_min_delta_and_floor():
    cfg = TrainConfig(lr=0.1, schedule="plateau", plateau_patience=1, gamma=0.1, monitor="val_accuracy",
                      min_delta=0.05, min_lr=0.002, epochs=10)
    optimizer, scheduler = build_optimizer(nn.Linear(2, 2), cfg, 1)
    seen = []
    for error in [0.5, 0.3, 0.28, 0.1, 0.1, 0.1]:  # accuracy 0.5, 0.7, 0.72 (< min_delta), 0.9, flat, flat
        scheduler.epoch_end({"val_error": error, "val_loss": 1.0, "val_top5_error": 0.0})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.002, 0.002])


def test_warmup_multiplies_the_new_schedules_too():
    for schedule in ("restarts", "poly", "plateau"):
        cfg = TrainConfig(schedule=schedule, lr=0.1, warmup_epochs=1, epochs=4)
        plain = TrainConfig(schedule=schedule, lr=0.1, epochs=4)
        got, base = lrs(cfg, 4), lrs(plain, 4)
        assert got[:4] == pytest.approx([b * (s + 1) / 4 for s, b in enumerate(base[:4])])
        assert got[4:] == base[4:]


# ----------------------------------------------------------------------------------------- suites
@pytest.mark.parametrize(("extra", "fragment"), [
    ("layer_decay = 0.8\nbackbone_lr = 0.001", "exclusive"),
    ("layer_decay = 1.5", "less than or equal to 1"),
    ("betas = [0.9]", "betas must be 2"),
    ("betas = [0.9, 1.5]", "betas must be 2"),
    ("eps = 0", "greater than 0"),
    ("rmsprop_alpha = 1.0", "less than 1"),
    ('schedule = "plateau"\ngamma = 2.0', "gamma < 1"),
    ("plateau_patience = 0", "greater than or equal to 1"),
    ('schedule = "step"\ncooldown_epochs = 1', "cooldown_epochs follow a schedule that ends at min_lr"),
    ('schedule = "cosine"\ncooldown_epochs = 2', "must be < epochs"),
    ("restart_mult = 0.5", "greater than or equal to 1"),
    ("restart_decay = 0", "greater than 0"),
    ("poly_power = 0", "greater than 0"),
    ('wd_norm_bias = "maybe"', "boolean"),
])
def test_bad_optimizer_and_schedule_values_are_one_line_errors(write_suite, extra, fragment):
    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(extra)))
    assert e.value.key.startswith("train") and fragment in str(e.value) and "\n" not in str(e.value)


KEYS = {"betas": [0.85, 0.99], "eps": 1e-7, "rmsprop_alpha": 0.9, "weight_decay": 0.01, "wd_norm_bias": False,
        "gamma": 0.5, "plateau_patience": 1}


def run(path, tmp_path):
    planned = api.plan(path, check=False)
    cells = planned.cells
    summary = api.run(planned, results=tmp_path / "r", device="cpu", progress=LogProgress())
    assert not summary.failed, summary.failed
    out = []
    for cell in cells:
        folder = summary.suite_dir / cell.id
        out.append((cell, json.loads((folder / "cell.json").read_text())["config"]["train"],
                    json.loads((folder / "result.json").read_text())["train"]))
    return out


def test_optimizer_keys_round_trip_through_a_suite_and_land_in_result_json(write_suite, tmp_path):
    path = write_suite("\n".join(f"{k} = {json.dumps(v)}" for k, v in KEYS.items()) + """
        schedule = "plateau"
        [grid]
        "train.optimizer" = ["lamb", "rmsprop"]
        """)
    cells = run(path, tmp_path)
    assert sorted(c.config.train.optimizer for c, _, _ in cells) == ["lamb", "rmsprop"]
    for cell, config, record in cells:
        assert {k: config[k] for k in KEYS} == KEYS
        assert cell.config.train.betas == (0.85, 0.99)
        opt = record["optimizer"]
        assert opt["name"] == cell.config.train.optimizer
        if opt["name"] == "lamb":
            assert opt["class"] == "timm.optim.lamb.Lamb" and opt["settings"]["betas"] == [0.85, 0.99]
            assert opt["settings"]["eps"] == 1e-7
        else:
            assert opt["class"] == "torch.optim.rmsprop.RMSprop" and opt["settings"]["alpha"] == 0.9
        decay = {g["name"]: g["weight_decay"] for g in record["param_groups"]}
        assert decay == {"all": 0.01, "all/no_decay": 0.0}
        assert all(g["lr"] == 0.003 and g["params"] > 0 for g in record["param_groups"])


def test_layer_decay_and_schedule_keys_round_trip_and_land_in_result_json(write_suite, tmp_path):
    path = write_suite("""
        layer_decay = 0.5
        restart_mult = 2.0
        restart_decay = 0.5
        cycle_epochs = 1
        poly_power = 2.0
        cooldown_epochs = 1
        [model]
        arch = "timm:resnet10t"
        [grid]
        "train.schedule" = ["restarts", "poly"]
        """)
    cells = run(path, tmp_path)
    assert sorted(c.config.train.schedule for c, _, _ in cells) == ["poly", "restarts"]
    for _, config, record in cells:
        assert {k: config[k] for k in ("layer_decay", "restart_mult", "restart_decay", "poly_power",
                                       "cooldown_epochs")} == {"layer_decay": 0.5, "restart_mult": 2.0,
                                                               "restart_decay": 0.5, "poly_power": 2.0,
                                                               "cooldown_epochs": 1.0}
        lr = {g["name"]: g["lr"] for g in record["param_groups"]}
        assert lr["depth_0"] == pytest.approx(0.003) and lr["depth_5"] == pytest.approx(0.003 * 0.5 ** 5)
