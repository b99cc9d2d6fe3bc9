"""Running cells: determinism, shared initial weights, resume, failure isolation, records on disk, smoke."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import bench
from bench import execute
from bench.cell import RunOptions
from tests.support import run_file

IN_PROCESS = RunOptions(isolate=False)  # where a test spies on the runner, which a child would not see


def test_cell_records_on_disk(write_suite, tmp_path):
    summary = run_file(write_suite(), tmp_path / "r")
    assert len(summary.ran) == 1 and not summary.failed
    cell_dir = summary.suite_dir / summary.ran[0]
    result = json.loads((cell_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["schema_version"] == bench.SCHEMA_VERSION
    for split in ("val", "test"):
        assert set(result["metrics"][split]) == {"top1_error", "top5_error", "loss", "f1_macro", "f1_weighted",
                                                 "auc_macro", "map"}
        assert 0 <= result["metrics"][split]["top1_error"] <= 1
    cost = result["cost"]
    assert cost["params_total"] == cost["params_trainable"] > 0 and cost["gflops_forward"] > 0
    assert cost["train_time_s"] > 0 and cost["train_images_per_s"] > 0 and cost["peak_rss_mb"] > 50
    assert {"torch", "torchvision", "timm", "bench", "device", "device_name"} <= set(result["env"])
    history = pd.read_csv(cell_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2] and result["best_epoch"] in (1, 2)
    assert history.loc[result["best_epoch"] - 1, "val_error"] == pytest.approx(result["metrics"]["val"]["top1_error"])
    import numpy as np

    preds = np.load(cell_dir / "predictions.npz")
    assert preds["test_logits"].shape == (len(preds["test_labels"]), 4)
    # the saved test predictions reproduce the recorded test error
    err = float((preds["test_logits"].argmax(1) != preds["test_labels"]).mean())
    assert err == pytest.approx(result["metrics"]["test"]["top1_error"], abs=1e-6)
    assert (summary.suite_dir / "suite.toml").read_text().startswith("\n[suite]")
    assert list((summary.suite_dir / "splits").glob("*.json")) and list((summary.suite_dir / "init").glob("*.safetensors"))


def test_a_result_says_how_its_cell_trained_and_counts_the_images_history_counts(write_suite, tmp_path):
    """result.json alone has the whole picture (loss, schedule, augmentation, model kwargs: the resolved
    config), and its images per epoch are those an epoch's steps took in: max_steps' share, aug_splits' views."""
    path = write_suite('''
        max_steps = 2
        augment = "hflip"
        aug_splits = 3
        loss = "jsd"
        schedule = "step"
        [model]
        arch = "bench:mlp"
        kwargs = {hidden = 8}
    ''')
    summary = run_file(path, tmp_path / "r")
    assert not summary.failed, summary.failed
    cell_dir = summary.suite_dir / summary.ran[0]
    result = json.loads((cell_dir / "result.json").read_text())
    config = json.loads((cell_dir / "cell.json").read_text())["config"]
    assert result["config"] == config
    train = config["train"]
    assert (train["loss"], train["schedule"], train["augment"], config["model"]["kwargs"]) == \
        ("jsd", "step", "hflip", {"hidden": 8})
    assert train["max_steps"] * train["batch_size"] < result["data"]["images"]["train"]  # max_steps does cut
    per_epoch = pd.read_csv(cell_dir / "history.csv")["train_images"].tolist()
    assert per_epoch == [result["train"]["train_images_per_epoch"]] * train["epochs"]
    assert per_epoch[0] == train["max_steps"] * train["batch_size"] * train["aug_splits"]


def test_same_cell_twice_gives_identical_metrics(write_suite, tmp_path):
    path = write_suite()  # with augmentation: its randomness must be seeded too
    path.write_text(path.read_text().replace('lr = 0.003', 'lr = 0.003\naugment = "crop_flip"'))
    a = run_file(path, tmp_path / "a")
    b = run_file(path, tmp_path / "b")
    ra = json.loads((a.suite_dir / a.ran[0] / "result.json").read_text())
    rb = json.loads((b.suite_dir / b.ran[0] / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"]
    ha = pd.read_csv(a.suite_dir / a.ran[0] / "history.csv")
    hb = pd.read_csv(b.suite_dir / b.ran[0] / "history.csv")
    assert ha["train_loss"].tolist() == hb["train_loss"].tolist()


def test_cells_differing_in_technique_start_from_identical_weights(write_suite, tmp_path, monkeypatch):
    path = write_suite('[grid]\n"train.lr" = [0.003, 0.0003]\n"train.augment" = ["none", "flip"]\n')
    seen = []
    real_fit = execute.fit

    def spy(model, *a, **k):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *a, **k)

    monkeypatch.setattr(execute, "fit", spy)
    summary = run_file(path, tmp_path / "r", options=IN_PROCESS)
    assert len(summary.ran) == 4 and len(seen) == 4
    for other in seen[1:]:
        assert all(torch.equal(seen[0][k], other[k]) for k in seen[0])
    results = [json.loads((summary.suite_dir / c / "result.json").read_text()) for c in summary.ran]
    assert len({r["init"]["sha256"] for r in results}) == 1
    saved = load_file(str(next((summary.suite_dir / "init").glob("*.safetensors"))))
    assert all(torch.equal(saved[k], seen[0][k]) for k in saved)
    # ... and the techniques did make a difference
    assert len({json.dumps(r["metrics"]) for r in results}) == 4


def test_another_seed_or_arch_gets_other_initial_weights(write_suite, tmp_path):
    path = write_suite('[grid]\n"model.arch" = ["bench:small_cnn", "bench:mlp"]\n')
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    summary = run_file(path, tmp_path / "r")
    assert len(list((summary.suite_dir / "init").glob("*.safetensors"))) == 4


def test_resume_skips_finished_cells_and_force_reruns(write_suite, tmp_path, monkeypatch):
    path = write_suite('[grid]\n"train.lr" = [0.01, 0.003, 0.001]\n')
    real = execute.run_cell
    calls = []

    def stop_at_third(cell, *a, **k):
        calls.append(cell.id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the third cell
        return real(cell, *a, **k)

    monkeypatch.setattr(execute, "run_cell", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_file(path, tmp_path / "r", options=IN_PROCESS)
    monkeypatch.setattr(execute, "run_cell", real)
    first_two = calls[:2]
    mtimes = {c: (tmp_path / "r" / "tiny" / c / "result.json").stat().st_mtime_ns for c in first_two}
    summary = run_file(path, tmp_path / "r")
    assert summary.skipped == first_two and summary.ran == [calls[2]]
    assert all((tmp_path / "r" / "tiny" / c / "result.json").stat().st_mtime_ns == t for c, t in mtimes.items())
    forced = run_file(path, tmp_path / "r", options=RunOptions(force=True))
    assert len(forced.ran) == 3 and not forced.skipped


def test_a_failing_cell_is_recorded_and_the_others_run(write_suite, tmp_path, cli, use_plugin):
    use_plugin("boom", 'raise RuntimeError("boom in the forward pass")')  # a network that fails once it trains
    path = write_suite('[grid]\n"model.arch" = ["bench:small_cnn", "bench:boom", "bench:mlp"]\n')
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    assert code == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "tiny").glob("*/result.json")]
    assert sorted(r["status"] for r in records) == ["failed", "ok", "ok"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "boom in the forward pass" in failed["error"] and "Traceback" in failed["traceback"]
    assert "FAILED: arch=bench:boom" in err
    code, out, _ = cli("report", tmp_path / "r" / "tiny")
    assert code == 0 and "failed:" in out and "boom" in out


def test_smoke_runs_every_cell_of_a_folder_suite_without_its_data(write_suite, tmp_path, cli):
    path = write_suite("""
        [data]
        source = "folder"
        root = "does/not/exist"
        image_size = 224

        [model]
        pretrained = true
        freeze = "all_but_head"

        [grid]
        "model.arch" = ["tv:alexnet", "bench:mlp"]
    """, base="[suite]\nname = \"fold\"\n")
    code, _, err = cli("run", path, "--results", tmp_path / "r")
    assert code == 2 and "does/not/exist" in err  # without --smoke, the missing data is the user's error
    code, _, err = cli("run", path, "--smoke", "--results", tmp_path / "r")
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "fold-smoke").glob("*/result.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert all(r["data"]["source"] == "folder" for r in records)  # same source type as the suite
    cells = [json.loads(p.read_text()) for p in (tmp_path / "r" / "fold-smoke").glob("*/cell.json")]
    assert {c["config"]["data"]["image_size"] for c in cells} == {64}  # AlexNet's smallest accepted size


def test_float16_logits_take_half_the_disk_and_change_neither_the_id_nor_a_figure(write_suite, tmp_path):
    """train.stored_logits = "float16": the same cell (its id), trained to the same bits, its record's figures
    from the full-precision logits; the stored copy half the bytes, and the figures recomputed from it agree
    to 3 digits."""
    import numpy as np

    from bench.metrics import full_metrics, load_predictions

    full = run_file(write_suite(), tmp_path / "a")
    half = run_file(write_suite("stored_logits = \"float16\"\n", name="half.toml"), tmp_path / "b")
    assert full.ran == half.ran
    a, b = (s.suite_dir / s.ran[0] for s in (full, half))
    record = json.loads((b / "result.json").read_text())
    assert json.loads((a / "result.json").read_text())["metrics"] == record["metrics"]
    with np.load(a / "predictions.npz") as wide, np.load(b / "predictions.npz") as narrow:
        assert wide["test_logits"].dtype == np.float32 and narrow["test_logits"].dtype == np.float16
        assert np.array_equal(wide["test_confusion"], narrow["test_confusion"])
        assert narrow["test_logits"].nbytes * 2 == wide["test_logits"].nbytes
    logits, labels = load_predictions(b, "test")
    assert logits.dtype == torch.float32
    again = full_metrics(logits, labels)
    for name, value in record["metrics"]["test"].items():
        assert again[name] == pytest.approx(value, abs=2e-3), name
