"""freeze = "features": the backbone's features computed once, cached, shared, and trained on by fit()."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from bench import features
from bench.cell import RunOptions
from bench.models import create_model
from tests.support import packed, run_file


def run(path, results, **kw):  # in this process: a test counts feature extractions, which a child would hide
    return run_file(path, results, options=RunOptions(isolate=False), **kw)


def results_by_label(summary):
    out = {}
    for cell_id in summary.ran + summary.skipped:
        cell = json.loads((summary.suite_dir / cell_id / "cell.json").read_text())
        out[cell["label"]] = json.loads((summary.suite_dir / cell_id / "result.json").read_text())
        out[cell["label"]]["dir"] = summary.suite_dir / cell_id
    return out


def test_features_give_the_metrics_of_all_but_head(write_suite, tmp_path):
    # Same init, split, batches and head: only where the backbone runs differs (once, channels-last in
    # batches of its own, vs every step). Frozen BN is in eval mode both ways, so the numbers agree up to
    # float summation order; tolerance 1e-4 on losses, identical errors.
    path = write_suite("""
        [model]
        head_hidden = [16]
        [[cells]]
        label = "loop"
        "model.freeze" = "all_but_head"
        "train.epochs" = 3
        [[cells]]
        label = "cached"
        "model.freeze" = "features"
        "train.epochs" = 3
    """)
    res = results_by_label(run(path, tmp_path / "r"))
    loop, cached = res["loop"], res["cached"]
    assert cached["features"]["computed"] == ["train", "val", "test"]
    assert cached["init"]["sha256"] == loop["init"]["sha256"]
    for split in ("val", "test"):
        assert cached["metrics"][split]["top1_error"] == loop["metrics"][split]["top1_error"]
        assert cached["metrics"][split]["loss"] == pytest.approx(loop["metrics"][split]["loss"], abs=1e-4)
    h_loop, h_cached = pd.read_csv(loop["dir"] / "history.csv"), pd.read_csv(cached["dir"] / "history.csv")
    assert h_cached["train_loss"].tolist() == pytest.approx(h_loop["train_loss"].tolist(), abs=1e-4)
    assert h_cached["train_loss"].iloc[-1] < h_cached["train_loss"].iloc[0]  # it did train
    assert cached["cost"]["params_trainable"] == loop["cost"]["params_trainable"]
    # a features cell's best weights are its head's
    from safetensors.torch import load_file

    assert set(load_file(str(cached["dir"] / "best.safetensors"))) == {"1.weight", "1.bias", "4.weight", "4.bias"}


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_a_bf16_cell_extracts_in_bf16_as_its_loop_twin_runs_the_backbone(write_suite, tmp_path):
    """The features of a bf16 cell are what its backbone gives under bf16 autocast, as all_but_head's loop
    computes them, and an fp32 cell's cache is never taken for them (nor theirs for an fp32 cell's)."""
    path = write_suite("""
        [model]
        freeze = "features"
        [[cells]]
        label = "fp32"
        [[cells]]
        label = "bf16"
        "train.precision" = "bf16"
        [[cells]]
        label = "bf16 loop"
        "train.precision" = "bf16"
        "model.freeze" = "all_but_head"
    """)
    res = results_by_label(run(path, tmp_path / "r"))
    assert res["fp32"]["features"]["key"] != res["bf16"]["features"]["key"]
    for split in ("val", "test"):
        assert res["bf16"]["metrics"][split]["top1_error"] == res["bf16 loop"]["metrics"][split]["top1_error"]
    # the tiny data's metrics cannot tell bf16 features from fp32 ones; the features can: a bf16 backbone's
    # are bf16 numbers, every one of them, an fp32 backbone's are not
    from safetensors.torch import load_file

    from bench.data.cachedir import cache_root

    for label, in_bf16 in (("bf16", True), ("fp32", False)):
        feats = load_file(str(cache_root() / "features" / res[label]["features"]["key"] / "val.safetensors"))
        exact = torch.equal(feats["features"], feats["features"].bfloat16().float())
        assert exact == in_bf16, label


def test_cache_is_shared_across_heads_and_runs_and_keyed_by_the_weights(write_suite, tmp_path, monkeypatch):
    calls = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    donors = []
    for i in range(2):
        torch.manual_seed(i)
        donors.append(tmp_path / f"donor{i}.safetensors")
        save_file({k: v.contiguous() for k, v in create_model("bench:small_cnn", 4, 16).state_dict().items()},
                  str(donors[-1]))
    path = write_suite(f"""
        [model]
        freeze = "features"
        pretrained = "{donors[0]}"
        [grid]
        "model.head_dropout" = [0.0, 0.5]
    """)
    first = results_by_label(run(path, tmp_path / "a"))
    assert len(calls) == 3  # train, val, test once, for both heads
    assert sorted(len(r["features"]["computed"]) for r in first.values()) == [0, 3]
    assert len({r["features"]["key"] for r in first.values()}) == 1
    run(path, tmp_path / "b")  # another run, another results folder: the cache is reused
    assert len(calls) == 3
    path.write_text(path.read_text().replace(str(donors[0]), str(donors[1])))  # other backbone weights
    other = results_by_label(run(path, tmp_path / "c"))
    assert len(calls) == 6
    assert {r["features"]["key"] for r in other.values()}.isdisjoint({r["features"]["key"] for r in first.values()})


def test_features_with_augmentation_is_a_load_time_error(write_suite, cli):
    path = write_suite('[model]\nfreeze = "features"\n[[cells]]\nlabel = "x"\n"train.augment" = "flip"\n')
    code, _, err = cli("plan", path)
    assert code == 2 and "model.freeze" in err and "un-augmented" in err and "train.augment" in err


def test_a_model_that_does_more_after_its_classifier_is_refused(tmp_path):
    from bench.data.loaders import ArrayDataset
    from bench.errors import UserError

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)

        def forward(self, x):
            return 2 * self.head(self.body(x).mean((2, 3)))

    ds = ArrayDataset(packed(tmp_path / "cache", np.zeros((4, 8, 8, 3), dtype=np.uint8)), np.arange(4), np.zeros(4), 8, 8)
    with pytest.raises(UserError, match="does more after its classifier"):
        features.extract(Scaled(), ds, torch.device("cpu"), 4)
