"""What a cell's record says of how it was computed and what it cost: the backend switches
(train.deterministic, train.tf32) set for the cell, read back into result.json and put back after it; the
peak of anonymous memory, which leaves out the page cache of mapped files (the decoded-image cache); and,
on a GPU, synchronised timings and the caching allocator's reserve (tests/test_gpu.py, `nox -s gpu`)."""

from __future__ import annotations

import json
import mmap
import os
import time

import numpy as np
import pytest
import torch

from bench.config import TrainConfig
from bench.environment import AnonPeak, peak_rss_mb, reset_peak_rss
from bench.techniques.backends import backend_flags
from tests.support import run_file

SWITCHES = ("deterministic", "cudnn_benchmark", "tf32_matmul", "tf32_conv")


def _now() -> dict:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_conv": torch.backends.cudnn.allow_tf32}


@pytest.mark.parametrize(("deterministic", "tf32"), [(False, None), (True, None), (False, True), (True, False)])
def test_the_switches_are_set_for_the_cell_read_back_and_put_back(deterministic, tf32):
    before = _now()
    with backend_flags(TrainConfig(deterministic=deterministic, tf32=tf32)) as record:
        assert record == _now()  # the record is what torch says, not what was asked
        assert record["deterministic"] is deterministic and record["cudnn_benchmark"] is not deterministic
        if tf32 is not None:
            assert record["tf32_matmul"] is tf32 and record["tf32_conv"] is tf32
        else:  # torch's own choice, untouched
            assert (record["tf32_matmul"], record["tf32_conv"]) == (before["tf32_matmul"], before["tf32_conv"])
        if deterministic:
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
            with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
                torch.zeros(3).put_(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))  # put_ has none
    assert _now() == before
    torch.zeros(3).put_(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))  # and after the cell, it runs again


def test_a_deterministic_cell_records_its_switches_and_trains_to_the_same_bits(write_suite, tmp_path):
    path = write_suite('[[cells]]\nlabel = "fast"\n\n[[cells]]\nlabel = "exact"\n"train.deterministic" = true\n'
                       '"train.tf32" = false\n')
    summary = run_file(path, tmp_path, log=open(os.devnull, "w"))
    assert len(summary.ran) == 2 and not summary.failed, summary.failed
    records = {}
    for cell in (tmp_path / "tiny").iterdir():
        if (cell / "result.json").is_file():
            r = json.loads((cell / "result.json").read_text())
            records[r["config"]["train"].get("deterministic", False)] = r
    exact, fast = records[True]["train"]["backends"], records[False]["train"]["backends"]
    assert exact == {"deterministic": True, "cudnn_benchmark": False, "tf32_matmul": False, "tf32_conv": False}
    assert fast["deterministic"] is False and fast["cudnn_benchmark"] is True
    # on the CPU the switches change no arithmetic: both cells learn the same numbers
    assert records[True]["metrics"] == records[False]["metrics"]


def test_anonymous_peak_leaves_out_the_page_cache_of_a_mapped_file(tmp_path):
    """Reading a 256 MiB file through a memory map raises VmHWM by its size; the anonymous peak stays."""
    path = tmp_path / "images.npy"
    size = 256 * 2**20
    with open(path, "wb") as f:
        f.truncate(size)
    np.save(tmp_path / "warm.npy", np.zeros(1))  # numpy's own first-use allocations, outside the block
    exact = reset_peak_rss()
    before = peak_rss_mb()
    with AnonPeak(every=0.01) as anon, open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        start = anon.mb
        checksum = sum(m[i] for i in range(0, size, 4096))  # touch every page
    assert checksum == 0
    if anon.mb is None:
        pytest.skip("no /proc/self/status here")
    assert anon.mb - start < 32  # MB: the mapped file is not the process's own memory
    if exact:
        assert peak_rss_mb() - before > 200  # while VmHWM counted the mapped pages
    with AnonPeak(every=0.01) as anon:  # and what the process allocates itself, it does count
        start = anon.mb
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, written
        time.sleep(0.1)
        del block
    assert anon.mb - start > 60


def test_a_cells_process_keeps_mkls_thread_count(tmp_path, monkeypatch, use_plugin, write_suite):
    """MKL_DYNAMIC is off in every cell's process (bench sets it as it is imported): with it on, a cell run
    after another in one `bench run` trained to other bits than alone (the quickstart's MLP with crop_flip
    picked another epoch)."""
    import os

    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress

    out = tmp_path / "mkl.txt"
    monkeypatch.setenv("MKL_OUT", str(out))
    use_plugin("mkl_env", 'open(os.environ["MKL_OUT"], "w").write(os.environ.get("MKL_DYNAMIC", "unset"))')
    path = write_suite('[model]\narch = "bench:mkl_env"\n')
    summary = api.run(api.plan(path, check=False), results=tmp_path / "r", device="cpu", options=RunOptions(),
                      progress=LogProgress(open(os.devnull, "w")))
    assert summary.ran and not summary.failed, summary.failed
    assert out.read_text() == "FALSE"
