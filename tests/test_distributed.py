"""A cell trained as several ranks of torch.distributed (`[resources] processes = 2`: gloo on the CPU, two
processes standing in for two GPUs) takes the steps one process takes at the same global batch, sees every
training image once an epoch, counts every validation image once, and writes what one process writes."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.cell import RunOptions
from bench.config import Resources
from bench.distributed import RankBatches
from bench.errors import UserError
from bench.executors import make_executor
from tests.support import bench, no_process_left, outputs, run_file, wait_for

LR = 0.05
SUITE = """
[suite]
name = "ranks"
[data]
source = "synthetic"
image_size = 16
split = [0.7, 0.15, 0.15]
[data.synthetic]
classes = 4
images = 133
size = 16
[model]
arch = "{arch}"
pretrained = false
[train]
epochs = {epochs}
batch_size = 20
optimizer = "sgd"
momentum = 0.0
weight_decay = 0.0
lr = {lr}
schedule = "constant"
{train}
[resources]
processes = {processes}
"""


def suite_file(tmp_path, processes, *, arch="bench:mlp", epochs=1, lr=LR, train="", name="s"):
    path = tmp_path / f"{name}{processes}.toml"
    path.write_text(SUITE.format(arch=arch, epochs=epochs, lr=lr, train=train, processes=processes))
    return path


def trained(tmp_path, processes, **kw):
    """(best weights, result.json, predictions.npz) of the suite's one cell, trained here with `processes` ranks."""
    path = suite_file(tmp_path, processes, **kw)
    plan_resources = Resources(processes=processes)
    summary = run_file(path, tmp_path / f"r{processes}{kw.get('name', '')}", options=RunOptions(threads=1),
                       executor=make_executor("local", resources=plan_resources))
    assert summary.ran and not summary.failed, summary.failed
    cell = summary.suite_dir / summary.ran[0]
    return (load_file(cell / "best.safetensors"), json.loads((cell / "result.json").read_text()),
            dict(np.load(cell / "predictions.npz")))


@pytest.mark.parametrize("images, batch, ranks", [(23, 6, 2), (23, 6, 3), (13, 8, 4), (40, 8, 2), (21, 8, 4)])
def test_the_ranks_share_every_global_batch(images, batch, ranks):
    """Together the ranks get each global batch once, in order, never a share of one image (BatchNorm cannot
    train on it); a rank a short last batch leaves out steps on two stand-ins at weight 0; the weights make
    DDP's mean over the ranks the global batch's mean."""
    sampler = list(np.random.default_rng(0).permutation(images))
    shares = [list(RankBatches(sampler, batch, r, ranks)) for r in range(ranks)]
    assert {len(s) for s in shares} == {-(-images // batch)}  # every rank steps as often
    for step in range(len(shares[0])):
        whole = sampler[step * batch:(step + 1) * batch]
        weights = [RankBatches(sampler, batch, r, ranks).weight(step) for r in range(ranks)]
        assert [i for r in range(ranks) if weights[r] for i in shares[r][step]] == whole
        assert all(len(shares[r][step]) >= 2 for r in range(ranks))
        for r, w in enumerate(weights):  # DDP's mean over ranks of w x a rank's mean: 1/len(whole) per image
            assert w == 0 or w / ranks / len(shares[r][step]) == pytest.approx(1 / len(whole))


def test_two_ranks_train_as_one_process_at_the_same_global_batch(tmp_path):
    """A model without BatchNorm, one epoch of plain SGD over an uneven last batch: the weights of 2 ranks
    equal one process's to within float rounding (so every gradient did), every training image counted once,
    every validation and test image evaluated once, in order."""
    one_w, one, one_p = trained(tmp_path, 1)
    two_w, two, two_p = trained(tmp_path, 2)
    assert two["env"]["world_size"] == 2 and two["env"]["distributed_backend"] == "gloo"
    assert one["env"]["world_size"] == 1
    for k in one_w:
        assert (one_w[k] - two_w[k]).abs().max() / LR < 1e-6, k  # the gradients' difference
    train_images = sum(one["data"]["train_class_counts"])
    assert train_images % 20 % 2 == 1  # the last batch splits unevenly
    assert one["train"]["train_images_per_epoch"] == two["train"]["train_images_per_epoch"] == train_images
    for split in ("val", "test"):
        assert np.array_equal(one_p[f"{split}_labels"], two_p[f"{split}_labels"])
        np.testing.assert_allclose(one_p[f"{split}_logits"], two_p[f"{split}_logits"], atol=1e-5)
        assert one["metrics"][split]["top1_error"] == two["metrics"][split]["top1_error"]
    assert not list((tmp_path / "r2" / "ranks").glob("*/rank1.log")), "a quiet helper leaves no log"


def test_sync_bn_normalises_over_the_global_batch(tmp_path):
    """With train.sync_bn, 2 ranks' BatchNorm statistics (and so their step) are one process's; without it,
    each rank normalises its own half and the running statistics differ."""
    kw = {"arch": "bench:small_cnn", "train": "max_steps = 1\nsync_bn = true"}
    one, _, _ = trained(tmp_path, 1, **kw)
    synced, record, _ = trained(tmp_path, 2, **kw)
    apart, _, _ = trained(tmp_path, 2, **{**kw, "train": "max_steps = 1"}, name="apart")
    stats = [k for k in one if k.endswith(("running_mean", "running_var"))]
    assert stats and record["config"]["train"]["sync_bn"]
    for k in one:
        assert (one[k].double() - synced[k].double()).abs().max() < 1e-6, k
    assert max((one[k] - apart[k]).abs().max() for k in stats) > 1e-4


@pytest.mark.parametrize("change, key, fix", [
    (("batch_size = 20", "batch_size = 3"), "train.batch_size", "set train.batch_size >= 4"),
    (('pretrained = false', 'pretrained = false\nfreeze = "features"'), "model.freeze", "drop [resources]"),
])
def test_what_cannot_split_over_ranks_is_refused_before_anything_trains(tmp_path, change, key, fix):
    from bench import api

    path = suite_file(tmp_path, 2)
    path.write_text(path.read_text().replace(*change))
    with pytest.raises(UserError) as e:
        api.plan(path, device="cpu")
    assert e.value.key == key and fix in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_without_sync_bn_every_rank_evaluates_rank_0s_weights(tmp_path):
    """Each rank's BatchNorm statistics drift apart within an epoch (DDP sends rank 0's only before each
    training step): the validation predictions a cell records are those of the weights it saves."""
    from bench.config import load_suite
    from bench.data.loaders import Preprocess
    from bench.evaluate import predict
    from bench.network import build_network
    from bench.store import load_best
    from bench.suite import expand

    _, _, saved = trained(tmp_path, 2, arch="bench:small_cnn", epochs=2)
    cell, = expand(load_suite(tmp_path / "s2.toml"))
    suite_dir = tmp_path / "r2" / "ranks"
    net = build_network(cell, suite_dir, torch.device("cpu"))
    load_best(net.model, suite_dir / cell.id)
    logits, labels, _ = predict(net.model, net.loaders["val"], Preprocess(torch.device("cpu")))
    assert np.array_equal(labels.numpy(), saved["val_labels"])
    np.testing.assert_allclose(logits.numpy(), saved["val_logits"], atol=1e-5)


def test_a_rank_that_fails_fails_the_cell_naming_its_log(tmp_path, use_plugin):
    use_plugin("rank_one_fails", 'if __import__("torch").distributed.get_rank() == 1: raise RuntimeError("rank one")')
    path = suite_file(tmp_path, 2, arch="bench:rank_one_fails")
    summary = run_file(path, tmp_path / "r", options=RunOptions(threads=1),
                       executor=make_executor("local", resources=Resources(processes=2)))
    (cell, error), = summary.failed
    assert "rank 1 of the cell ended" in error and "rank1.log" in error
    assert "RuntimeError: rank one" in (summary.suite_dir / cell / "rank1.log").read_text()


SHARDS = [(5, 3), (0, 3), (3, 0), (4, 4)]  # each rank's rows of a split: uneven, empty, even
BUDGETS = [64 << 20, 12, 30]  # bytes a rank sends a round: all at once, a row (3 floats), two rows


def _shard(rank: int, rows: int) -> torch.Tensor:
    # an empty shard's logits as evaluation may leave them: without their class dimension
    return torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3) + 1000 * rank if rows else torch.empty(0)


def _gather_every_case(rank: int, store_file: str, out) -> None:
    """One of two gloo ranks: gather_rows over every case, each result sent to the parent."""
    import torch.distributed as dist

    from bench import distributed

    dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=rank, world_size=2)
    try:
        for budget in BUDGETS:
            distributed.GATHER_BYTES = budget
            for shards in SHARDS:
                labels = torch.full((shards[rank],), rank, dtype=torch.int64)
                out.put((rank, budget, shards, distributed.gather_rows(_shard(rank, shards[rank])),
                         distributed.gather_rows(labels)))
    finally:
        dist.destroy_process_group()


def test_evaluation_gathers_the_ranks_rows_in_order_a_budget_at_a_time(tmp_path):
    """What a split's logits and labels become on every rank, gathered in rounds of GATHER_BYTES (so that a
    10,000-class split's logits never sit whole on a GPU): every rank's rows, in rank order, whatever the
    budget and however the shards fall."""
    from bench.processes import spawn_context

    ctx = spawn_context()
    out = ctx.Queue()
    ranks = [ctx.Process(target=_gather_every_case, args=(r, str(tmp_path / "store"), out)) for r in range(2)]
    for p in ranks:
        p.start()
    got = [out.get(timeout=120) for _ in range(2 * len(BUDGETS) * len(SHARDS))]
    for p in ranks:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, budget, shards, logits, labels in got:
        expected = torch.cat([_shard(r, n).reshape(n, 3) for r, n in enumerate(shards)])
        assert torch.equal(logits, expected), (rank, budget, shards)
        assert labels.tolist() == [r for r, n in enumerate(shards) for _ in range(n)], (rank, budget, shards)


def test_gpus_above_one_are_whole_ranks():
    with pytest.raises(ValueError, match="a whole number"):
        Resources(gpus=1.5)
    assert Resources(gpus=0.5).ranks("cuda") == 1 and Resources(gpus=4).ranks("cuda") == 4
    assert Resources(processes=2).ranks("cpu") == 2 and Resources(gpus=4).ranks("cpu") == 1


def test_a_batchnorm_kind_the_cpu_cannot_sync_is_refused():
    from timm.layers import BatchNormAct2d

    from bench.distributed import sync_batchnorm

    with pytest.raises(UserError, match="train.sync_bn on the CPU"):
        sync_batchnorm(torch.nn.Sequential(BatchNormAct2d(3)), torch.device("cpu"))


# ---------------------------------------------------------------- slow: kills and other launchers
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-rank run of a few epochs, with augmentation and mixing (both drawn per rank)."""
    tmp = tmp_path_factory.mktemp("reference")
    path = suite_file(tmp, 2, arch="bench:small_cnn", epochs=4, train=LONGER)
    summary = run_file(path, tmp / "r", options=RunOptions(threads=1),
                       executor=make_executor("local", resources=Resources(processes=2)))
    assert summary.ran and not summary.failed, summary.failed
    return path, outputs(tmp / "r" / "ranks")


LONGER = 'augment = "crop_flip"\nmix = "mixup"\nsync_bn = true'


@pytest.mark.slow
def test_a_killed_two_rank_cell_resumes_as_if_never_stopped(tmp_path, reference):
    """kill -9 of `bench run` alone, after an epoch checkpoint: the cell's process and its helper rank end
    with it; the next run goes on from the checkpoint and ends bitwise as the uninterrupted run."""
    path, expected = reference
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    results = tmp_path / "r"
    proc = bench("run", str(path), "--results", str(results), "--threads", "1", "--device", "cpu", env=env)
    wait_for(lambda: any(results.glob("ranks/*/checkpoint.json")), proc, "a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert no_process_left(proc.pid), "a rank of the killed run lived on"
    summary = run_file(path, results, options=RunOptions(threads=1),
                       executor=make_executor("local", resources=Resources(processes=2)))
    assert summary.ran and not summary.failed, summary.failed
    record = json.loads((summary.suite_dir / summary.ran[0] / "result.json").read_text())
    assert record["train"]["resumed_at_epoch"] is not None
    assert outputs(results / "ranks") == expected


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_the_same_two_rank_cell_through_slurm_tasks_and_a_ray_placement_group(tmp_path, reference, executor):
    """submitit's local executor (a job of two tasks) and a local Ray instance (a placement group of two
    bundles) train the cell as the local launcher does, to the bit."""
    pytest.importorskip({"slurm": "submitit", "ray": "ray"}[executor])
    path, expected = reference
    runner = make_executor(executor, resources=Resources(processes=2, cpus=2))
    summary = run_file(path, tmp_path / "r", options=RunOptions(threads=1), executor=runner)
    assert summary.ran and not summary.failed, summary.failed
    record = json.loads((summary.suite_dir / summary.ran[0] / "result.json").read_text())
    assert record["env"]["world_size"] == 2 and record["env"]["executor"] == executor
    assert outputs(tmp_path / "r" / "ranks") == expected
    assert not list((tmp_path / "r" / "ranks").glob("*/.rendezvous-*")), "the rendezvous file is removed"
