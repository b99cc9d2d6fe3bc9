"""create_model: any architecture by name, with a fresh classifier for the class count, and hub weights
when asked (failing at once with a clear error when they are neither cached nor reachable)."""

from __future__ import annotations

import os
import socket

import torch
from torch import nn

from bench.errors import UserError
from bench.models.builtins import BUILTINS
from bench.models.heads import replace_head
from bench.models.names import split_arch


def accepts_image_size(arch: str) -> bool:
    """Built-ins whose weights depend on the input size (MLP, flattening CNNs) get it at construction."""
    prefix, name = split_arch(arch)
    if prefix != "bench":
        return False
    import inspect

    return "image_size" in inspect.signature(BUILTINS[name]).parameters


def create_model(arch: str, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """A model with a fresh `num_classes` head; `pretrained=True` fetches hub weights for the backbone."""
    prefix, name = split_arch(arch)
    if pretrained:
        require_hub_weights(arch)
    if prefix == "bench":
        kwargs = {"image_size": image_size} if accepts_image_size(arch) else {}
        return BUILTINS[name](num_classes=num_classes, **kwargs)
    if prefix == "timm":
        import timm

        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise _download_error(arch, e) from None
    import torchvision

    extra = {"aux_logits": False} if name in ("inception_v3", "googlenet") else {}
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights, **extra)
    except OSError as e:
        raise _download_error(arch, e) from None
    replace_head(model, num_classes)
    return model


def skeleton(arch: str, num_classes: int, image_size: int, **head) -> nn.Module:
    """The network's structure, with the head that `head` (bench.models.heads.build_head's options) makes,
    on the meta device: no memory, no initialisation, so checks that only count or shape its layers (freeze
    modes, a weights file's fit) cost milliseconds even for ConvNeXt-Large. A model whose constructor needs
    real tensors is built on the CPU instead."""
    from bench.models.heads import build_head

    def build(device: str) -> nn.Module:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            model = create_model(arch, num_classes, image_size)
            build_head(model, arch, num_classes, **head)
        return model

    try:
        return build("meta")
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
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return UserError(f"cannot fetch pretrained weights for {arch} ({first})", key="model.pretrained",
                     hint="connect to the network once to fill the cache, or set it to a local weights file or false")
