"""Registries without a test of their own, parametrized over the registry itself: a new entry is covered
(or named here as not yet covered) the moment it is registered."""

from __future__ import annotations

import pytest
import timm.optim
import torch
from torch import nn

from bench.config import TrainConfig
from bench.techniques import OPTIMIZERS, TTA_VIEWS, build_tta
from bench.techniques.optimizers import EXCLUDED

# optimizer name -> (suite settings, the class, what it must have been given). bench's four original names
# keep the torch constructors' numbers; the rest show the suite's settings reaching timm's optimizers. A
# registered name without a case here is checked against timm's own defaults (OptimInfo.defaults): timm_case.
OPTIMIZER_CASES = {
    "sgd": ({"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
            torch.optim.SGD, {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3}),
    "adam": ({"weight_decay": 1e-3}, torch.optim.Adam,
             {"weight_decay": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}),
    "adamw": ({"weight_decay": 0.05}, torch.optim.AdamW,
              {"weight_decay": 0.05, "betas": (0.9, 0.999), "eps": 1e-8}),
    # Keras' RMSprop (study 000): momentum as the suite says, torch's alpha (Keras' rho) left at 0.99
    "rmsprop": ({"momentum": 0.5, "weight_decay": 1e-4}, torch.optim.RMSprop,
                {"momentum": 0.5, "weight_decay": 1e-4, "alpha": 0.99, "eps": 1e-8}),
    "rmsproptf": ({"momentum": 0.5, "rmsprop_alpha": 0.95}, timm.optim.RMSpropTF,
                  {"momentum": 0.5, "alpha": 0.95}),
    "lamb": ({"betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.02}, timm.optim.Lamb,
             {"betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.02}),
    "lars": ({"momentum": 0.8, "eps": 1e-7}, timm.optim.Lars, {"momentum": 0.8, "eps": 1e-7}),
    "sgdp": ({"momentum": 0.7}, timm.optim.SGDP, {"momentum": 0.7, "nesterov": True}),  # timm's default
    "adabelief": ({"betas": (0.85, 0.995), "eps": 1e-12}, timm.optim.AdaBelief,
                  {"betas": (0.85, 0.995), "eps": 1e-12, "rectify": False}),
    "lion": ({"betas": (0.95, 0.98), "eps": 1e-3}, timm.optim.Lion, {"betas": (0.95, 0.98)}),  # takes no eps
    "adopt": ({"betas": (0.9, 0.99)}, timm.optim.Adopt, {"betas": (0.9, 0.99)}),
    "adan": ({"betas": (0.98, 0.92, 0.99)}, timm.optim.Adan, {"betas": (0.98, 0.92, 0.99)}),
}


def timm_case(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict, type, dict]:
    """No settings: timm's class, with the defaults timm's registry binds for the name."""
    info = timm.optim.get_optimizer_info(name)
    defaults = {k: v for k, v in (info.defaults or {}).items() if k in optimizer.defaults}
    return {}, timm.optim.get_optimizer_class(name, bind_defaults=False), defaults


def test_the_registry_is_timms_list_less_what_cannot_run_in_bench():
    assert set(OPTIMIZERS) | set(EXCLUDED) == set(timm.optim.list_optimizers())
    assert not set(OPTIMIZERS) & set(EXCLUDED) and set(OPTIMIZER_CASES) <= set(OPTIMIZERS)
    for name in EXCLUDED:  # third-party kernels (apex, bitsandbytes) and second-order optimizers only
        info = timm.optim.get_optimizer_info(name)
        assert isinstance(info.opt_class, str) or info.second_order, name


# kron (and kronw) torch.compile their preconditioner, fullgraph, for every tensor shape. Inductor's C++ code
# generation for it costs 20-40 s of CPU on a cold cache; the default run compiles it through TorchDynamo and
# AOTAutograd (the whole graph captured and traced: what fails on a graph break), the slow one through inductor
# as a user's run does.
COMPILES = {name for name in OPTIMIZERS if name.startswith("kron")}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_gets_the_suite_settings_and_takes_a_step(name, monkeypatch):
    if name in COMPILES:
        compile_ = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, **kwargs, backend="aot_eager"))
    takes_a_step(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPILES))
def test_a_compiling_optimizer_takes_a_step_compiled_by_inductor(name):
    takes_a_step(name)


def takes_a_step(name: str) -> None:
    settings = OPTIMIZER_CASES[name][0] if name in OPTIMIZER_CASES else {}
    layer = nn.Linear(3, 2)
    cfg = TrainConfig(optimizer=name, lr=0.05, **settings)
    optimizer = OPTIMIZERS[name]([{"params": list(layer.parameters()), "lr": cfg.lr}], cfg)
    _, kind, expected = OPTIMIZER_CASES[name] if name in OPTIMIZER_CASES else timm_case(name, optimizer)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and {k: group[k] for k in expected} == expected
    before = layer.weight.detach().clone()
    for _ in range(2):  # ADOPT's first step only initialises its second moment
        optimizer.zero_grad()
        layer(torch.ones(4, 3)).sum().backward()
        optimizer.step()
    assert not torch.equal(before, layer.weight)


def test_sgd_without_momentum_is_never_nesterov():
    # torch refuses nesterov without momentum; a suite that turns momentum off keeps its nesterov = true
    cfg = TrainConfig(optimizer="sgd", momentum=0.0, nesterov=True)
    optimizer = OPTIMIZERS["sgd"](nn.Linear(2, 2).parameters(), cfg)
    assert optimizer.param_groups[0]["nesterov"] is False


X = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)

# view spec -> the images its views must give, the original first
TTA_CASES = {
    "identity": ("identity", [X]),
    "hflip": ("hflip", [X, X.flip(-1)]),
    "vflip": ("vflip", [X, X.flip(-2)]),
    "rotate": ("rotate:90", [X, X.rot90(1, (-2, -1)), X.rot90(-1, (-2, -1))]),  # +90 is counter-clockwise
    "shift": ("shift:1", None),  # four views, each moved by one pixel: checked below
}


def test_every_tta_view_has_a_case():
    assert set(TTA_VIEWS) == set(TTA_CASES)


@pytest.mark.parametrize("name", sorted(TTA_VIEWS))
def test_tta_view_gives_the_expected_images(name):
    spec, expected = TTA_CASES[name]
    views = build_tta([spec])
    outs = [view(X) for view in views]
    assert torch.equal(outs[0], X)  # the original is always the first view
    if expected is not None:
        assert len(outs) == len(expected)
        for out, want in zip(outs, expected, strict=True):
            torch.testing.assert_close(out, want)
        return
    assert len(outs) == 5
    moved = outs[1:]
    assert torch.equal(moved[0][..., 1:], X[..., :-1]) and torch.equal(moved[1][..., :-1], X[..., 1:])  # right, left
    assert torch.equal(moved[2][..., 1:, :], X[..., :-1, :]) and torch.equal(moved[3][..., :-1, :], X[..., 1:, :])
