"""Initial weights: created once per (architecture, pretrained source, classes, head, seed), saved under
results/<suite>/init/, and loaded by every cell that shares the key, so that cells which differ only in a
technique start from byte-identical weights. Also: loading a local pretrained weights file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from bench.config import CellConfig
from bench.errors import UserError
from bench.models import accepts_image_size, create_model, head_name
from bench.suite import config_hash


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded with weights_only=True (no pickle code)."""
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist", key="model.pretrained",
                        hint="give the path to a .safetensors or .pt state dict, true for hub weights, or false")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights file '{path}' ({type(e).__name__})", key="model.pretrained",
                        hint="save it with torch.save(model.state_dict(), path) or as .safetensors") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' holds a {type(obj).__name__}, not a state dict", key="model.pretrained")
    return obj


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load every weight of `state`; only the classifier may differ in shape (another class count)."""
    own = model.state_dict()
    head = head_name(model)
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not k.startswith(head + ".")]
    missing = [k for k in own if k not in state and not k.startswith(head + ".")]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        detail = (f"shape mismatch at {bad[:3]}" if bad else f"missing {missing[:3]}" if missing
                  else f"unexpected {unexpected[:3]}")
        raise UserError(f"weights file '{source}' does not fit this architecture ({detail})", key="model.pretrained",
                        hint="check model.arch matches the network the file was saved from")
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)


def init_key(cfg: CellConfig, num_classes: int) -> str:
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str):
        pretrained = "sha256:" + file_digest(Path(pretrained))
    parts = {"arch": cfg.model.arch, "pretrained": pretrained, "classes": num_classes, "seed": cfg.seed}
    if accepts_image_size(cfg.model.arch):
        parts["image_size"] = cfg.data.image_size
    return config_hash(parts, n=16)


def initial_model(cfg: CellConfig, num_classes: int, init_dir: Path) -> tuple[nn.Module, str]:
    """The cell's model with its shared initial weights, and the key they are stored under."""
    key = init_key(cfg, num_classes)
    path = init_dir / f"{key}.safetensors"
    # The random head (and any random backbone) is drawn under a seed derived from the key alone, so a
    # cell's initial weights do not depend on which cells ran before it in the process.
    exists = path.exists()
    # The random head (and any random backbone) is drawn under a seed derived from the key alone, so a
    # cell's initial weights do not depend on which cells ran before it in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(key[:8], 16))
        hub = cfg.model.pretrained is True and not exists  # once saved, the hub is never asked again
        model = create_model(cfg.model.arch, num_classes, cfg.data.image_size, pretrained=hub)
    if exists:
        load_model(model, str(path))
        return model, key
    if isinstance(cfg.model.pretrained, str):
        load_backbone(model, read_state_file(Path(cfg.model.pretrained)), Path(cfg.model.pretrained))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp))  # handles tied tensors, unlike save_file
    tmp.replace(path)
    return model, key
