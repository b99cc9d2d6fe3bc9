"""The checks that need a CUDA device (`nox -s gpu`; skipped without one, left out of the default run):
a cell on the GPU records synchronised timings, the allocator's peak and reserve, and the fast backend
switches; a deterministic cell repeats bit for bit; augmentation replayed on the GPU is the CPU's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bench import api
from bench.cell import RunOptions
from bench.progress import LogProgress
from tests.support import outputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CELLS = '[model]\narch = "bench:small_cnn"\n\n[[cells]]\nlabel = "fast"\n\n' \
        '[[cells]]\nlabel = "exact"\n"train.deterministic" = true\n'


def _run(path, results, **options):
    return api.run(api.plan(path, check=False), results=results, device="cuda",
                   options=RunOptions(**options), progress=LogProgress(open(os.devnull, "w")))


def test_a_cell_on_the_gpu_records_its_memory_time_and_switches(write_suite, tmp_path):
    summary = _run(write_suite(CELLS), tmp_path)
    assert len(summary.ran) == 2 and not summary.failed, summary.failed
    for cell in (tmp_path / "tiny").iterdir():
        if not (cell / "result.json").is_file():
            continue
        r = json.loads((cell / "result.json").read_text())
        cost, backends = r["cost"], r["train"]["backends"]
        assert r["env"]["device"] == "cuda"
        assert 0 < cost["peak_cuda_mb"] <= cost["peak_cuda_reserved_mb"]
        assert cost["train_time_s"] > 0 and cost["train_images_per_s"] > 0
        assert backends["cudnn_benchmark"] is not backends["deterministic"]
        assert r["train"]["pin_memory"] is True and r["train"]["loader_workers"] >= 0  # auto: the CPU share less one


def test_a_deterministic_cell_repeats_bit_for_bit_on_the_gpu(write_suite, tmp_path):
    path = write_suite('deterministic = true\n\n[model]\narch = "bench:small_cnn"\n')  # TINY ends in [train]
    _run(path, tmp_path / "a")
    _run(path, tmp_path / "b")
    assert outputs(tmp_path / "a" / "tiny") == outputs(tmp_path / "b" / "tiny")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_cell_on_two_gpus_trains_as_one_gpu_does(write_suite, tmp_path):
    """`[resources] gpus = 2`: two NCCL ranks with SyncBatchNorm (timm's converter) end close to one GPU's
    cell at the same global batch, rank 0 alone writing, the record naming both devices."""
    from bench.config import Resources
    from bench.executors import make_executor

    path = write_suite('sync_bn = true\n\n[model]\narch = "bench:small_cnn"\n')
    results = {}
    for gpus in (1, 2):
        summary = api.run(api.plan(path, check=False), results=tmp_path / str(gpus), device="cuda",
                          options=RunOptions(), progress=LogProgress(open(os.devnull, "w")),
                          executor=make_executor("local", resources=Resources(gpus=gpus)))
        assert summary.ran and not summary.failed, summary.failed
        results[gpus] = json.loads((summary.suite_dir / summary.ran[0] / "result.json").read_text())
    assert results[2]["env"]["world_size"] == 2 and results[2]["env"]["distributed_backend"] == "nccl"
    assert results[1]["train"]["train_images_per_epoch"] == results[2]["train"]["train_images_per_epoch"]
    assert abs(results[1]["metrics"]["val"]["loss"] - results[2]["metrics"]["val"]["loss"]) < 0.05


@pytest.mark.parametrize("spec", ['["rrc", "hflip", "jitter"]', "randaugment", "crop_flip", "blur:1.0", "rotate:15",
                                  '["hflip", "zoom", "translate"]', "erasing:1.0"])
def test_augmentation_on_the_gpu_is_the_cpus_within_rounding(spec):
    """The same draws replayed on the GPU, from pinned memory: CUDA resizes and blurs in floats where the CPU
    has uint8 kernels, so the pixels may differ by rounding, never by the augmentation."""
    from tests.test_device_augment import _both

    _, on_cpu, draws = _both(spec)
    pinned = draws.pin_memory()
    assert pinned.pixels.is_pinned()
    on_gpu = pinned.apply(torch.device("cuda"))
    assert on_gpu.is_cuda and on_gpu.dtype == torch.uint8
    diff = (on_gpu.cpu().int() - on_cpu.int()).abs().float()
    assert diff.mean() < 1.0, float(diff.mean())


@pytest.mark.parametrize("arrival", ["files decoded, each its own size", "a stacked batch",
                                     "crops packed by the loader"])
def test_crops_resized_as_one_batch_on_the_gpu_are_torchvisions_within_rounding(arrival):
    """bench.data.windows on CUDA (its batched path there) against torchvision's resize in floats."""
    from tests.test_windows import ARRIVALS, _expected

    got, images, boxes = ARRIVALS[arrival]("cuda")
    diff = (got.cpu().int() - _expected(images, boxes, uint8=False).int()).abs()
    assert got.is_cuda and diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (int(diff.max()), float(diff.float().mean()))


def test_a_device_augmented_cell_trains_on_the_gpu(write_suite, tmp_path):
    path = write_suite('augment = ["rrc", "hflip", "jitter"]\naugment_on = "device"\n\n'
                       '[model]\narch = "bench:small_cnn"\n')  # TINY ends in [train]
    summary = _run(path, tmp_path)
    assert len(summary.ran) == 1 and not summary.failed, summary.failed


def test_files_decoded_by_nvjpeg_are_the_cpus_within_rounding(tmp_path):
    """data.decode = "device": the GPU's decoder and resize against the CPU's, on the same files."""
    from PIL import Image

    from bench.data.cache import stored_index
    from bench.data.loaders import FileDataset
    from tests.support import photo

    rng, paths, sizes = np.random.default_rng(0), [], [(200, 150), (150, 210), (64, 64), (300, 200)]
    for i, (w, h) in enumerate(sizes):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(photo(rng, h, w)).save(paths[-1], quality=90)
    widths, heights = np.array(sizes).T
    ds = FileDataset(paths, 64, np.arange(4), np.zeros(4), 56, 64, shapes=stored_index(widths, heights, 64)[:, 1:])
    draws = ds.__getitems__(list(range(4)))[0].pin_memory()
    on_gpu, on_cpu = draws.apply(torch.device("cuda")), draws.apply(torch.device("cpu"))
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape == (4, 3, 56, 56)
    # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: torchvision's own bound for it
    assert (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean() < 2.0


def test_a_checkpoint_holds_the_training_gpus_random_state_alone():
    """A cell resumed where fewer GPUs are visible (one per cell, a Slurm binding) restores its state; so does a
    checkpoint of the bench that saved every visible GPU's."""
    from bench.checkpoint import rng_state, set_rng_state

    torch.zeros(1, device="cuda")  # CUDA initialised, as a training cell has it
    state = rng_state({})
    assert isinstance(state["cuda"], torch.Tensor)
    expected = torch.rand(4, device="cuda")
    set_rng_state(state, {})
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    set_rng_state({**state, "cuda": [state["cuda"]] * (torch.cuda.device_count() + 1)}, {})
    assert torch.equal(torch.rand(4, device="cuda"), expected)
