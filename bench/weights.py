"""Initial weights: created once per (architecture, pretrained source, classes, head, seed), saved under
results/<suite>/init/, and loaded by every cell that shares the key, so that cells which differ only in a
technique start from byte-identical weights. Also: loading a local pretrained weights file, and a staged
cell's start from its parent's best weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from bench.artefacts import building, intact, seal, sealed_digest
from bench.config import CellConfig
from bench.errors import UserError
from bench.hashing import file_digest, stable_hash
from bench.models.factory import accepts_image_size, create_model, structural_kwargs
from bench.models.heads import build_head, head_name
from bench.store import atomic_path, init_file


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
    in_head = [k for k in state if k.startswith(head + ".")]  # another class count or another head: ours stays
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape] + \
        [k for k in in_head if k not in own]
    bad = [k for k in skipped if not k.startswith(head + ".")]
    missing = [k for k in own if k not in state and not k.startswith(head + ".")]
    unexpected = [k for k in state if k not in own and k not in in_head]
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
    m = cfg.model
    if structure := structural_kwargs(m.arch, cfg.data.image_size, m.kwargs):
        parts["kwargs"] = structure  # drop rates alone do not: those cells share their initial weights
    if m.pool is not None or m.head_hidden or m.head_dropout > 0 or m.head_replaces != "last":
        # What decides the head's weights: its layers (dropout > 0 adds a Dropout module, which renames
        # them) and, for timm, the pool (reset_classifier draws a new classifier). Not the dropout rate.
        parts["head"] = {"pool": m.pool, "hidden": list(m.head_hidden), "dropout": m.head_dropout > 0,
                         "activation": m.head_activation if m.head_hidden else None,
                         **({"replaces": m.head_replaces} if m.head_replaces != "last" else {})}
    return stable_hash(parts, 16)


def _seed(cfg: CellConfig, num_classes: int) -> int:
    # From the key without the head: cells that differ only in their head start from the same backbone.
    return int(init_key(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"pool": None, "head_hidden": (), "head_dropout": 0.0, "head_replaces": "last"})}),
        num_classes)[:8], 16)


def initial_model(cfg: CellConfig, num_classes: int, init_dir: Path) -> tuple[nn.Module, str]:
    """The cell's model with its shared initial weights, and the key they are stored under. Made once, by one
    process, and sealed (bench.artefacts.sealed_digest then names them); a saved file that no longer matches
    its seal is refused, since the cells that finished were trained from what it held."""
    key = init_key(cfg, num_classes)
    path = init_file(init_dir, key)
    with building(path):
        exists = path.exists()
        # The random head (and any random backbone) is drawn under a seed derived from the key alone, so a
        # cell's initial weights do not depend on which cells ran before it in the process.
        m = cfg.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg, num_classes))
            hub = m.pretrained is True and not exists  # once saved, the hub is never asked again
            model = create_model(m.arch, num_classes, cfg.data.image_size, pretrained=hub, kwargs=m.kwargs)
            build_head(model, m.arch, num_classes, image_size=cfg.data.image_size, **m.head_options())
        if exists:
            _load_initial(model, path)
            return model, key
        if isinstance(cfg.model.pretrained, str):
            load_backbone(model, read_state_file(Path(cfg.model.pretrained)), Path(cfg.model.pretrained))
        with atomic_path(path) as tmp:
            save_model(model, str(tmp))  # handles tied tensors, unlike save_file
        seal(path)
    return model, key


_INIT_FIX = ("the finished cells were trained from the original: restore it, or delete it (and its "
             ".sha256.json) and rerun the suite with --force")


def check_initial(path: Path) -> None:
    """Refuse saved initial weights that no longer match their seal (preflight asks, and every cell). A file
    saved by a bench before seals has none, and is taken as it is."""
    if sealed_digest(path) is not None and not intact(path):
        raise UserError(f"shared initial weights {path} changed since they were saved (their sha256 differs)",
                        hint=_INIT_FIX)


def _load_initial(model: nn.Module, path: Path) -> None:
    check_initial(path)
    if sealed_digest(path) is None:
        seal(path)
    try:
        load_model(model, str(path))
    except Exception as e:  # a damaged header or tensors of other shapes
        raise UserError(f"unreadable shared initial weights ({type(e).__name__})", file=path,
                        hint=_INIT_FIX) from None
