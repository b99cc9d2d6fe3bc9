"""The checks that need a CUDA device (`nox -s gpu`; skipped without one, left out of the default run):
a cell on the GPU records synchronised timings, the allocator's peak and reserve, and the fast backend
switches; a deterministic cell repeats bit for bit."""

from __future__ import annotations

import json
import os

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


def test_a_deterministic_cell_repeats_bit_for_bit_on_the_gpu(write_suite, tmp_path):
    path = write_suite('deterministic = true\n\n[model]\narch = "bench:small_cnn"\n')  # TINY ends in [train]
    _run(path, tmp_path / "a")
    _run(path, tmp_path / "b")
    assert outputs(tmp_path / "a" / "tiny") == outputs(tmp_path / "b" / "tiny")
