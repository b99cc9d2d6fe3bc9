"""model.freeze = "features" (study 000's feature extraction): the frozen backbone sees every image once.

The features are the input of the classifier head, captured by a forward pre-hook, so one code path serves
timm, torchvision and bench models. They are computed in eval mode on the un-augmented images, cached under
cache_root()/features/<key>/, and shared by every cell with the same backbone weights, data, split, image
size and preprocessing; the head then trains on them in the one training loop, bench.train.fit.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.artefacts import building, intact, seal
from bench.config import CellConfig
from bench.data import Prepared
from bench.data.cachedir import cache_root
from bench.data.loaders import IMAGENET_MEAN, IMAGENET_STD, ArrayDataset, Preprocess, make_loader
from bench.errors import UserError
from bench.hashing import stable_hash
from bench.models.heads import head_module, head_name
from bench.store import atomic_path
from bench.techniques.precision import precision_setup

VERSION = 2  # bump when what a cached file holds changes (2: whole images, data.crop_pct)
# Extraction batch on the CPU: larger batches only spill the caches. Per image, ResNet-18 at 64 px
# (channels-last, 2 cores) ran 1.13x faster in batches of 64 than of 256 on an AMD EPYC, where 256 was
# no faster than the loop's own forward (benchmarks/test_features.py).
CPU_BATCH = 64


class FeatureDataset(Dataset):
    """Float feature rows and labels; batches by one index like ArrayDataset, for the same loaders."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(idx)
        return self.features[rows], self.labels[rows]

    def __getitem__(self, i: int):
        return self.features[i], self.labels[i]


def backbone_digest(model: nn.Module) -> str:
    """sha256 of every tensor outside the head (weights and buffers such as BN statistics)."""
    head = head_name(model)
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name == head or name.startswith(head + "."):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_key(cfg: CellConfig, model: nn.Module, data: Prepared, device: torch.device) -> str:
    d, m = cfg.data, cfg.model
    # keys that are new since the cache was keyed join it only when set, so existing caches keep their keys
    newer = {**({"kwargs": m.kwargs} if m.kwargs else {}),
             **({"head_replaces": m.head_replaces} if m.head_replaces != "last" else {}),
             **({"precision": cfg.train.precision} if cfg.train.precision != "fp32" else {}),
             **({"prune": [d.prune_splits, d.min_per_class, d.top_classes]} if d.prune_splits else {}),
             # TF32 changes a GPU's convolutions' last bits, and deterministic kernels may (the device type is below)
             **({"tf32": cfg.train.tf32} if cfg.train.tf32 is not None else {}),
             **({"deterministic": True} if cfg.train.deterministic else {}),
             **({"decode": d.decode} if d.decode != "host" else {})}
    return stable_hash({
        "version": VERSION, "arch": m.arch, "pool": m.pool, "weights": backbone_digest(model),
        "split": data.split_key, "image_size": d.image_size, "stored_size": d.stored_size,
        "scale_size": d.scale_size, **newer,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        # the same backbone gives features that differ in the last bits on another device type
        "device": device.type}, 16)


@contextmanager
def _channels_last(model: nn.Module) -> Iterator[None]:
    """The model channels-last for a while: oneDNN's and cuDNN's convolutions run faster so, and extraction
    is all forward passes. Converted once for every split: a ResNet-18 round trip costs as much as a tenth
    of its extraction at 64 px."""
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def extract(model: nn.Module, dataset: ArrayDataset, device: torch.device, batch_size: int,
            autocast: Callable | None = None) -> torch.Tensor:
    """The head's input for every image of `dataset`, in order, in eval mode, as float32 on the CPU;
    under `autocast` (precision_setup's, the cell's precision) when given, as the loop would run the backbone."""
    head = head_module(model)
    if not isinstance(head, nn.Linear | nn.Sequential):
        raise UserError(f'freeze = "features" needs a linear classifier, this model has a {type(head).__name__}',
                        key="model.freeze", hint='use "all_but_head" for this architecture')
    plain = copy.copy(dataset)  # the same images (from the cache or their files), never augmented
    plain.transform, plain.splits, plain.replay = None, 1, None
    grabbed: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, args: grabbed.append(args[0]))
    prep = Preprocess(device, channels_last=True)
    model.eval()
    out = []
    try:
        for i, (x, _) in enumerate(make_loader(plain, batch_size, train=False, seed=0)):
            with autocast() if autocast else nullcontext():
                logits = model(prep(x))
                feats = grabbed.pop()
                # The head must be the model's last step: otherwise training it alone would be another model.
                if i == 0 and not torch.allclose(head(feats), logits, rtol=1e-4, atol=1e-5):
                    raise UserError(f"{type(model).__name__} does more after its classifier than the head itself",
                                    key="model.freeze", hint='use "all_but_head" for this architecture')
            out.append(feats.float().cpu())
    finally:
        handle.remove()
    return torch.cat(out) if out else torch.zeros(0)


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    if not intact(path):
        return None
    try:
        return load_file(str(path))
    except Exception:  # sealed, yet not safetensors this version reads: made again
        return None


def feature_setup(model: nn.Module, cfg: CellConfig, data: Prepared, loaders: dict[str, DataLoader],
                  device: torch.device) -> tuple[nn.Module, dict[str, DataLoader], dict[str, Any]]:
    """(the head to train, loaders of cached features, a record of the cache) for a features cell.

    The feature loaders reuse each image loader's batch sampler, so batches, order and any sampling
    technique are exactly those of the same cell trained on images."""
    key = feature_key(cfg, model, data, device)
    folder = cache_root() / "features" / key
    start, computed = time.perf_counter(), []
    autocast, _ = precision_setup(cfg.train.precision, device)
    batch = min(cfg.train.eval_batch_size, CPU_BATCH) if device.type == "cpu" else cfg.train.eval_batch_size
    out = {}
    with ExitStack() as converted:
        for split, ds in data.datasets.items():
            path = folder / f"{split}.safetensors"
            with building(path):  # one process extracts; a damaged or altered cache is extracted again
                saved = _read(path)
                if saved is None:
                    if not computed:
                        converted.enter_context(_channels_last(model))
                    saved = {"features": extract(model, ds, device, batch, autocast), "labels": ds.labels}
                    _write(path, saved)
                    seal(path)
                    computed.append(split)
            if not torch.equal(saved["labels"], ds.labels):  # a cache from other data under a colliding key
                raise UserError(f"feature cache {folder} does not match this split", key="model.freeze",
                                hint="delete that folder and rerun")
            old = loaders[split]
            # The generator too: each epoch's iterator draws from it, and the shuffling sampler shares it.
            out[split] = DataLoader(FeatureDataset(saved["features"], saved["labels"]),
                                    batch_sampler=old.batch_sampler, collate_fn=old.collate_fn,
                                    generator=old.generator)
    info = {"key": key, "computed": computed, "extract_s": time.perf_counter() - start, "dir": str(folder)}
    return head_module(model), out, info
