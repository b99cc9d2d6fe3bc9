"""create_model: any architecture by name, with a fresh classifier for the class count, and hub weights
when asked (failing at once with a clear error when they are neither cached nor reachable)."""

from __future__ import annotations

import inspect
import json
import os
import socket
from functools import cache
from typing import Any

import torch
from torch import nn

from bench.errors import UserError, first_line
from bench.models.builtins import BUILTINS
from bench.models.heads import replace_head
from bench.models.names import split_arch


def accepts_image_size(arch: str) -> bool:
    """Built-ins whose weights depend on the input size (MLP, flattening CNNs) get it at construction."""
    prefix, name = split_arch(arch)
    if prefix != "bench":
        return False
    return "image_size" in inspect.signature(BUILTINS[name]).parameters


def create_model(arch: str, num_classes: int, image_size: int, pretrained: bool = False,
                 kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A model with a fresh `num_classes` head; `pretrained=True` fetches hub weights for the backbone;
    `kwargs` (model.kwargs) go to the architecture's constructor, and one it refuses is a UserError that
    lists what it accepts."""
    if not kwargs:
        return _create(arch, num_classes, image_size, pretrained, {})
    try:
        return _create(arch, num_classes, image_size, pretrained, dict(kwargs))
    except (TypeError, ValueError, AssertionError) as e:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            accepted = constructor_params(_create(arch, num_classes, image_size, False, {}))
        raise UserError(f"{arch} refuses model.kwargs {kwargs} ({first_line(e)})", key="model.kwargs",
                        hint=f"{arch} accepts: {', '.join(accepted) or 'no keyword arguments'}") from None


def constructor_params(model: nn.Module) -> list[str]:
    """The keyword arguments the model's class takes (what model.kwargs may set)."""
    params = inspect.signature(type(model).__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _create(arch: str, num_classes: int, image_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    prefix, name = split_arch(arch)
    if pretrained:
        require_hub_weights(arch)
    if prefix == "bench":
        size = {"image_size": image_size} if accepts_image_size(arch) else {}
        return BUILTINS[name](num_classes=num_classes, **size, **kwargs)
    if prefix == "timm":
        import timm

        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise _download_error(arch, e) from None
    import torchvision

    extra = {"aux_logits": False} if name in ("inception_v3", "googlenet") else {}
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra, **kwargs)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights, **extra, **kwargs)
    except OSError as e:
        raise _download_error(arch, e) from None
    replace_head(model, num_classes)
    return model


@cache
def _structure(arch: str, image_size: int, kwargs_json: str) -> tuple:
    model = skeleton(arch, 2, image_size, model_kwargs=json.loads(kwargs_json))
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def structural_kwargs(arch: str, image_size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Those of `kwargs` that change the network's parameters (names or shapes), each tried alone: cells that
    differ only in a drop rate (dropout, stochastic depth, DropBlock) then share their initial weights, as
    cells that differ only in a technique do."""
    if not kwargs:
        return {}
    plain = _structure(arch, image_size, "{}")
    return {k: v for k, v in kwargs.items() if _structure(arch, image_size, json.dumps({k: v})) != plain}


def skeleton(arch: str, num_classes: int, image_size: int, model_kwargs: dict[str, Any] | None = None,
             **head) -> nn.Module:
    """The network's structure, with the head that `head` (bench.models.heads.build_head's options) makes,
    on the meta device: no memory, no initialisation, so checks that only count or shape its layers (freeze
    modes, a weights file's fit) cost milliseconds even for ConvNeXt-Large. A model whose constructor needs
    real tensors is built on the CPU instead."""
    from bench.models.heads import build_head

    def build(device: str) -> nn.Module:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            model = create_model(arch, num_classes, image_size, kwargs=model_kwargs)
            build_head(model, arch, num_classes, image_size=image_size, **head)
        return model

    try:
        return build("meta")
    except UserError:
        raise
    except Exception:  # e.g. .item() on a meta tensor in a constructor; a real error repeats on the CPU
        return build("cpu")


def require_hub_weights(arch: str) -> None:
    """UserError unless `arch` has hub weights that are in the local cache or whose host answers: at once,
    not after minutes of retries, and before anything is written (bench.suite.preflight asks too)."""
    prefix, name = split_arch(arch)
    if prefix == "bench":
        raise UserError(f"{arch} has no hub weights", key="model.pretrained",
                        hint="use false, or the path to a weights file")
    if prefix == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise UserError(f"timm has no pretrained weights for {arch}", key="model.pretrained",
                            hint="use false, the path to a weights file, or another architecture (`bench models`)")
        _require_hub(arch, _timm_cached(name), "huggingface.co")
        return
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)))
    _require_hub(arch, cached, "download.pytorch.org")


def _timm_cached(name: str) -> bool:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    return bool(hub_id) and any(isinstance(try_to_load_from_cache(hub_id, f), str)
                                for f in ("model.safetensors", "pytorch_model.bin"))


def _require_hub(arch: str, cached: bool, host: str) -> None:
    """Fail at once, not after minutes of retries, when the weights are neither cached nor reachable."""
    if cached:
        return
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise _download_error(arch, f"{host} is unreachable and the weights are not in the local cache") from None


def _download_error(arch: str, cause: object) -> UserError:
    return UserError(f"cannot fetch pretrained weights for {arch} ({first_line(cause)})", key="model.pretrained",
                     hint="connect to the network once to fill the cache, or set it to a local weights file or false")
