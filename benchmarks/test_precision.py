"""bf16 autocast against fp32: training throughput of a torchvision ResNet-18 on this machine's CPU.

Both sides run `bench.train.train_one_epoch` (the harness's own loop) on identical model copies and
pre-generated uint8 batches, interleaved round by round so background load hits both alike. The figure
is the ratio of median epoch times, bf16 / fp32 (above 1: bf16 is slower). bench refuses
`train.precision = "bf16"` on a CPU without native bf16 (see `bench.techniques.precision.precision_setup`); this
measures the autocast path directly to show why. Nothing is asserted about the ratio: it is a
measurement of the machine, not of bench.
"""

from __future__ import annotations

import copy
import statistics
import time
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bench.data.loaders import Preprocess
from bench.train import train_one_epoch

BATCH, STEPS, CLASSES = 16, 2, 10
ROUNDS, WARMUP = 3, 1


def make_batches(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=gen),
             torch.randint(0, CLASSES, (BATCH,), generator=gen)) for _ in range(STEPS)]


@pytest.mark.parametrize("size", [64, 112])
def test_bf16_vs_fp32_training_throughput(benchmark, size):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=CLASSES)
    batches = make_batches(size)
    prep = Preprocess(torch.device("cpu"))
    sides = {}
    for name in ("fp32", "bf16"):
        model = copy.deepcopy(reference)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16) if name == "bf16" else None
        sides[name] = (model, optimizer, autocast, [])

    def run(name: str) -> dict[str, float]:
        model, optimizer, autocast, times = sides[name]
        start = time.perf_counter()
        out = train_one_epoch(model, batches, optimizer, None, F.cross_entropy, prep, autocast=autocast)
        times.append(time.perf_counter() - start)
        return out

    def run_fp32() -> None:  # pedantic's untimed setup: returns nothing, or it would be taken as arguments
        run("fp32")

    result = benchmark.pedantic(partial(run, "bf16"), setup=run_fp32, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert result["images"] == BATCH * STEPS and torch.isfinite(torch.tensor(result["loss"]))
    fp32 = statistics.median(sides["fp32"][3][-ROUNDS:])
    bf16 = statistics.median(sides["bf16"][3][-ROUNDS:])
    ratio = bf16 / fp32
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    benchmark.extra_info.update(size=size, fp32_median_s=fp32, bf16_median_s=bf16, ratio=ratio,
                                native_bf16=bool(native), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                                threads=torch.get_num_threads())
    print(f"\nresnet18 {size}px batch {BATCH}: fp32 {BATCH * STEPS / fp32:.1f} img/s, "
          f"bf16 {BATCH * STEPS / bf16:.1f} img/s, bf16/fp32 time ratio {ratio:.2f} (native bf16: {native})")
