"""What a cell trained as several ranks of torch.distributed (`[resources] processes = N` on the CPU with gloo,
`gpus = N` on CUDA with NCCL) needs inside its one training loop: the group and its collectives, every rank's
share of each global batch and shard of an evaluated split, SyncBatchNorm and DistributedDataParallel. Outside
torch.distributed every function here is the one-process identity. How the ranks start: bench.ranks."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits this long has lost a rank
GO = "bench/go"  # the store key rank 0 sets once it knows whether the cell trains ("1") or not ("0")


class Stopped(Exception):
    """Raised on a rank other than 0 when rank 0 stopped the cell (pruned, failed): rank 0 records why."""


def world() -> int:
    """Ranks of this cell (1 outside torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the cell's files: rank 0, or the only one."""
    return rank() == 0


# ----------------------------------------------------------------------------------------- the group
_STATE: dict[str, Any] = {}  # this process's store, and whether rank 0 has said go


def join(store: dist.Store, at: int, ranks: int, device: torch.device) -> None:
    """This process into the cell's process group as rank `at` of `ranks` (NCCL on CUDA, gloo otherwise)."""
    dist.init_process_group(BACKENDS.get(device.type, "gloo"), store=store, rank=at, world_size=ranks,
                            timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    _STATE.update(store=store, told=False)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        tell(False)  # a helper still waiting learns there is nothing to train
        dist.destroy_process_group()
    _STATE.clear()


def tell(go: bool) -> None:
    """Rank 0 tells the helpers whether the cell trains (once: the first word counts)."""
    if _STATE and not _STATE["told"] and is_main():
        _STATE["store"].set(GO, "1" if go else "0")
        _STATE["told"] = True


def told() -> bool:
    """A helper: whether rank 0 said the cell trains (waits for it)."""
    return _STATE["store"].get(GO) == b"1"


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64, so counts stay exact)."""
    if world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm())
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def agree(flag: bool) -> bool:
    """Rank 0's `flag`, on every rank: a decision only rank 0 can make (its callbacks), taken by all."""
    if world() == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def same_buffers(*modules: nn.Module | None) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) in every rank's `modules`: DDP sends them before each
    training forward, so after an epoch each rank holds its last step's own; validation, the best weights
    and checkpoints must all be rank 0's, the weights it saves."""
    if world() == 1:
        return
    for module in modules:
        for buffer in module.buffers() if module is not None else ():
            if buffer.is_floating_point() or buffer.dtype == torch.long:
                moved = buffer.to(_comm())
                dist.broadcast(moved, src=0)
                if moved is not buffer:
                    buffer.copy_(moved)


# What one rank sends per collective while gathering rows: on a GPU a split's logits (4 GB for 100,000 images
# of 10,000 classes) would otherwise sit there whole, once per rank, on top of the model at the cell's end.
GATHER_BYTES = 64 << 20


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t`, concatenated in rank order (evaluation: the shards of a split, in order),
    gathered GATHER_BYTES a rank at a time into `t`'s device."""
    if world() == 1:
        return t
    shapes = gather_objects(tuple(t.shape))
    rows = max(s[0] for s in shapes)
    full = max(shapes, key=lambda s: s[0])  # an empty shard's tensor may have lost its other dimensions
    mine, comm = t.reshape(len(t), *full[1:]), _comm()
    step = max(1, GATHER_BYTES // (max(1, math.prod(full[1:])) * t.element_size()))  # rows a round
    pieces: list[list[torch.Tensor]] = [[] for _ in shapes]
    for start in range(0, max(rows, 1), step):  # as many rounds on every rank: the longest shard's
        padded = torch.zeros((min(step, rows - start), *full[1:]), dtype=t.dtype, device=comm)
        part = mine[start:start + len(padded)]
        padded[:len(part)] = part.to(comm)
        parts = [torch.empty_like(padded) for _ in shapes]
        dist.all_gather(parts, padded)
        for kept, got, shape in zip(pieces, parts, shapes, strict=True):
            kept.append(got[:max(0, shape[0] - start)].to(t.device))
    return torch.cat([chunk for kept in pieces for chunk in kept])


def _comm() -> torch.device:
    """Where a collective's tensors must be: NCCL's on the rank's GPU, gloo's on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def require_splittable(batch_size: int, freeze: str, ranks: int) -> None:
    """What a cell of several ranks cannot be, as a UserError naming the key: a global batch with fewer than
    two images a rank, or a head trained on cached features (one process's job)."""
    from bench.errors import UserError

    if ranks > 1 and batch_size < 2 * ranks:
        raise UserError(f"{batch_size} is the global batch: it needs two images or more for each of the cell's "
                        f"{ranks} ranks", key="train.batch_size", hint=f"set train.batch_size >= {2 * ranks}")
    if ranks > 1 and freeze == "features":
        raise UserError("'features' trains a head on cached features in one process", key="model.freeze",
                        hint="drop [resources] processes / gpus, or freeze another way (e.g. all_but_head)")


# ----------------------------------------------------------------------------------------- data
def shard_size(images: int, at: int, ranks: int) -> int:
    """Images rank `at` gets of a batch of `images` (numpy's array_split: sizes differ by at most one)."""
    return images // ranks + (at < images % ranks)


def batch_share(images: int, at: int, ranks: int) -> tuple[int, int]:
    """(first, count) of rank `at`'s share of a global batch of `images`: as even as it can be without a
    share of one image (BatchNorm cannot train on one image of 1x1 maps), so a short last batch goes to
    fewer ranks, two images or more each, and the others get none."""
    takers = max(1, min(ranks, images // 2))
    if at >= takers:
        return images, 0
    return sum(shard_size(images, r, takers) for r in range(at)), shard_size(images, at, takers)


class RankBatches(Sampler):
    """This rank's share of every global batch that `sampler` draws in `batch_size`s: each rank draws the
    same order (one seed), so together the ranks see every draw of the epoch once, and `train.batch_size`
    stays the global batch. A rank that a short last batch leaves without a share steps on the batch's first
    two images at weight 0 (every rank steps as often as the others; with train.sync_bn they count in that
    step's BatchNorm statistics)."""

    def __init__(self, sampler: Sampler, batch_size: int, at: int, ranks: int):
        self.sampler, self.batch_size, self.at, self.ranks = sampler, batch_size, at, ranks
        self.generator = getattr(sampler, "generator", None)  # what a checkpoint saves of the draws

    def __iter__(self) -> Iterator[list]:
        items = list(self.sampler)
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            first, count = batch_share(len(batch), self.at, self.ranks)
            yield batch[first:first + count] or batch[:2]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def weight(self, step: int) -> float:
        """This rank's loss weight at `step`: its share of the global batch times the ranks, so that DDP's
        mean over the ranks is the mean over the global batch, however unevenly it split."""
        images = min(self.batch_size, len(self.sampler) - step * self.batch_size)
        return batch_share(images, self.at, self.ranks)[1] * self.ranks / images


def eval_shard(images: int) -> range:
    """This rank's contiguous part of an evaluation split (gather_rows puts the parts back in order)."""
    at, ranks = rank(), world()
    lo = sum(shard_size(images, r, ranks) for r in range(at))
    return range(lo, lo + shard_size(images, at, ranks))


# ----------------------------------------------------------------------------------------- the model
class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer normalising over the global batch on the CPU, where torch's SyncBatchNorm refuses to
    run (its kernels are CUDA's, and DDP rejects it on CPU modules): the batch statistics summed over the
    ranks through differentiable all-reduces, so that 2 ranks normalise as 1 process would."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        pass  # it stands in for BatchNorm1d, 2d and 3d alike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf, dims, shape = x.float(), [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
        count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)).item()
        mean = all_reduce(xf.sum(dims)) / count
        var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / max(1.0, count - 1), m)
        out = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """train.sync_bn, in place: every BatchNorm layer normalising over the global batch. On CUDA through
    timm's converter (its BatchNormAct layers included); on the CPU torch's own BatchNorm layers become
    GlooSyncBatchNorm, and any other kind is refused."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            m.__class__ = GlooSyncBatchNorm  # the same parameters and buffers, normalised over every rank
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlooSyncBatchNorm):
            from bench.errors import UserError

            raise UserError(f"train.sync_bn on the CPU covers torch's BatchNorm layers, not {type(m).__name__}",
                            key="train.sync_bn", hint="train on CUDA, or set train.sync_bn = false")
    return model


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DistributedDataParallel (every rank holds the same weights from the first step: DDP
    broadcasts rank 0's)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
