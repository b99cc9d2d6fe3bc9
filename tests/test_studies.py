"""The five study suites say what the reports did: each one loaded and checked against the report's own
figures (epochs, sizes, splits, parameter counts), so that drift is caught; and the options they needed
(train-only pruning, per-copy offline augmentation, a head that replaces VGG's classifier, dropout that
follows the freeze, predictions for an unlabelled test set), each shown doing what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import DataConfig, load_suite
from bench.data import prepare
from bench.models.factory import create_model, skeleton
from bench.models.freeze import apply_freeze, count_params, set_train_mode
from bench.models.heads import build_head
from bench.suite import expand
from tests.support import packed

SUITES = Path(__file__).parent.parent / "suites"


def cells(name: str) -> dict[str, object]:
    return {c.label: c.config for c in expand(load_suite(SUITES / f"{name}.toml"))}


def params(cfg, classes: int) -> tuple[int, int]:
    """(total, trainable) of the cell's network, built on the meta device (no memory, no download)."""
    m = cfg.model
    model = skeleton(m.arch, classes, cfg.data.image_size, m.kwargs, **m.head_options())
    apply_freeze(model, m.freeze, cfg.data.image_size) if m.freeze not in ("none", "features") else None
    if m.freeze == "features":
        apply_freeze(model, "all_but_head")
    return count_params(model)


# ----------------------------------------------------------------------------------------- study 000
def test_study000_settings_and_model_sizes():
    c = cells("inat2021_study000")
    d = c["shallow"].data
    assert (d.top_classes, d.image_size, d.split, d.modes, d.source_split) == (100, 200, (0.6, 0.2, 0.2), "drop", False)
    assert all(cfg.train.optimizer == "rmsprop" and cfg.train.rmsprop_alpha == 0.9 for cfg in c.values())
    assert {k: v.train.epochs for k, v in c.items()} == {
        "shallow": 20, "deep": 30, "deeper": 30, "deep+dropout+augment": 50, "vgg16-features": 30,
        "vgg16-frozen+augment": 30, "vgg16-finetune": 50}
    assert c["deep+dropout+augment"].train.batch_size == 256 and c["deep"].train.batch_size == 128
    # "over 600 thousand", "almost 5 million", "almost 6 million" parameters
    assert 600_000 < params(c["shallow"], 100)[0] < 700_000
    assert 4_500_000 < params(c["deep"], 100)[0] < 5_000_000
    assert 5_500_000 < params(c["deeper"], 100)[0] < 6_000_000
    # fine-tuning trains block 5 and the study's dense head, not torchvision's fc6/fc7 (127.7M before)
    ft = c["vgg16-finetune"]
    assert ft.model.init_from == "vgg16-frozen+augment" and ft.model.head_replaces == "classifier"
    block5 = 3 * (512 * 512 * 9 + 512)
    head = 512 * 6 * 6 * 256 + 256 + 256 * 100 + 100  # flattened 6x6x512 conv output at 200 px
    assert params(ft, 100)[1] == block5 + head
    assert params(c["vgg16-features"], 100)[1] == head


def test_a_head_that_replaces_vggs_classifier_reads_the_flattened_conv_base():
    from bench.errors import UserError

    model = skeleton("tv:vgg16", 100, 200, hidden=(256,), dropout=0.5, replaces="classifier")  # meta device
    assert isinstance(model.avgpool, torch.nn.Identity) and model.classifier[1].in_features == 18432
    assert model(torch.zeros(1, 3, 200, 200, device="meta")).shape == (1, 100)
    with pytest.raises(UserError, match="no multi-layer dense classifier"):
        build_head(create_model("tv:resnet18", 3, 32), "tv:resnet18", 3, replaces="classifier", image_size=32)


@pytest.mark.parametrize(("freeze", "dropping"), [("none", {"classifier.0", "classifier.3"}),
                                                 ("last:1", {"classifier.3"}), ("all_but_head", set())])
def test_dropout_follows_the_freeze(freeze, dropping):
    """Dropout before a frozen layer does not drop (AlexNet's fc6 and fc7 frozen run as trained); dropout
    before a trainable one does."""
    torch.manual_seed(0)
    model = create_model("tv:alexnet", 3, 64)
    apply_freeze(model, freeze, 64)
    set_train_mode(model)
    assert {n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.training} == dropping
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        same = torch.equal(model(x), model(x))
    assert same is (not dropping)  # in training mode, only dropping layers make two passes differ


# ----------------------------------------------------------------------------------------- study 001
def test_study001_splits_90_10_prunes_the_training_split_only_and_has_the_transfer_experiment():
    for name in ("inat2019_pruning", "inat2019_backbones", "inat2019_transfer"):
        for cfg in cells(name).values():
            d, t = cfg.data, cfg.train
            assert (d.split, d.prune_splits, d.source_split, d.image_size, t.epochs) == (
                (0.9, 0.1, 0.0), ["train"], False, 224, 10)
    assert sorted(c.data.min_per_class for c in cells("inat2019_pruning").values()) == [0, 100]
    transfer = cells("inat2019_transfer")
    assert {k: (v.model.arch, v.model.pretrained, v.model.freeze) for k, v in transfer.items()} == {
        "scratch": ("tv:alexnet", False, "none"), "finetune-all": ("tv:alexnet", True, "none"),
        "frozen-but-last": ("tv:alexnet", True, "all_but_head")}
    backbones = cells("inat2019_backbones")
    assert sorted(v.model.arch for v in backbones.values()) == [
        "tv:alexnet", "tv:densenet121", "tv:resnext50_32x4d", "tv:shufflenet_v2_x1_0", "tv:squeezenet1_1"]


def _synthetic(**kw) -> DataConfig:
    return DataConfig(synthetic={"classes": 6, "images": 300, "imbalance": 8, "size": 16}, image_size=16,
                      split=(0.8, 0.1, 0.1), **kw)


def test_pruning_the_training_split_only_keeps_validation_and_test_and_the_split(tmp_path):
    """The Table 2 pair: the same split, the same val and test images; the pruned classes leave train only."""
    full = prepare(_synthetic(prune_splits=["train"]), 0, tmp_path)
    pruned = prepare(_synthetic(prune_splits=["train"], min_per_class=30), 0, tmp_path)
    assert full.split_key == pruned.split_key and full.num_classes == pruned.num_classes == 6
    for split in ("val", "test"):
        assert np.array_equal(full.datasets[split].rows, pruned.datasets[split].rows)
    counts = np.bincount(full.datasets["train"].labels.numpy(), minlength=6)
    kept = np.bincount(pruned.datasets["train"].labels.numpy(), minlength=6)
    assert (kept == np.where(counts >= 30, counts, 0)).all() and (counts < 30).any()
    assert pruned.info["curation"][-1]["step"] == "min_per_class"
    before = prepare(_synthetic(min_per_class=30), 0, tmp_path)  # the default: pruned before splitting
    assert before.num_classes < 6 and before.split_key != pruned.split_key


def test_bench_compare_pairs_the_table2_cells(write_suite, cli, tmp_path):
    path = write_suite('''
        [data]
        image_size = 16
        split = [0.8, 0.2, 0.0]
        prune_splits = ["train"]
        [data.synthetic]
        classes = 4
        images = 120
        size = 16
        imbalance = 6
        [train]
        epochs = 1
        [grid]
        "data.min_per_class" = [0, 12]
    ''', base="[suite]\nname = 't2'\n")
    assert cli("run", path, "--results", tmp_path / "r")[0] == 0
    code, out, err = cli("compare", "min_per_class=0", "min_per_class=12", "--suite", tmp_path / "r" / "t2",
                         "--split", "val")
    assert code == 0, err
    # both cells are scored on the very same validation images: the shared split's
    import re

    assert re.search(r"val images: [1-9]\d*;", out), out


# ----------------------------------------------------------------------------------------- study 002
def test_study002_settings_and_convnext_sizes_as_the_report():
    c = cells("plants8_study002")
    assert c["cnn"].model.arch == "bench:plain_cnn" and c["cnn"].train.augment == "none"
    assert all(v.data.image_size == (224 if v.model.arch == "timm:convnext_large" else 96) for v in c.values())
    assert all(v.train.monitor == "val_accuracy" and v.train.patience for v in c.values())
    assert c["inception"].model.head_dropout > 0
    ops = {str(a).split(":")[0] for a in c["inception"].train.augment}
    assert {"translate", "hflip", "rotate", "zoom", "cutout", "contrast", "brightness"} <= ops
    assert 2_300_000 < params(c["cnn"], 8)[0] < 2_500_000  # "almost 2.5 million parameters"
    total, trainable = params(c["convnext_large"], 8)
    assert total == 197_812_424  # the report's model summary
    assert abs(trainable - 172_709_384) / 172_709_384 < 1e-4  # Keras counts its 88 layers differently
    stages = [c["convnext_large"], c["convnext_large-stage2"], c["convnext_large-stage3"]]
    assert [s.train.epochs for s in stages] == [15, 32, 9]  # 56 epochs in all
    assert [(s.train.min_lr, s.train.lr) for s in stages] == [(1e-6, 1e-5), (1e-5, 1e-4), (1e-6, 1e-5)]
    assert [s.model.init_from for s in stages] == [None, "convnext_large", "convnext_large-stage2"]


# ----------------------------------------------------------------------------------------- study 003
def test_study003_settings():
    c = cells("inat2019_study003")
    assert {k: (v.model.arch, v.train.epochs) for k, v in c.items()} == {
        "wide_resnet50_2": ("tv:wide_resnet50_2", 4), "inception_v3": ("tv:inception_v3", 6),
        "mnasnet1_0": ("tv:mnasnet1_0", 18)}
    assert all((v.data.image_size, v.train.sampler, v.train.loss) == (560, "balanced", "complement")
               for v in c.values())
    header = (SUITES / "inat2019_study003.toml").read_text().split("[suite]")[0]
    assert "neither optimizer, learning rate nor batch size" in header and "bench predict" in header


# ----------------------------------------------------------------------------------------- study 004
def test_study004_settings_and_sizes_as_the_report():
    c = cells("fruits3_study004")
    base = c["cnn"]
    assert (base.train.batch_size, base.train.lr, base.train.patience, base.train.monitor) == (
        8, 1e-4, 3, "val_accuracy")
    assert base.data.split == (0.8, 0.2, 0.0) and base.data.modal_size
    assert [(c[k].train.batch_size, c[k].train.lr) for k in ("cnn", "cnn-bs64", "cnn-bs256")] == [
        (8, 1e-4), (64, 1e-4), (256, 1e-4)]  # the batch sweep at lr 1e-4
    assert [(c[k].train.batch_size, c[k].train.lr) for k in ("cnn-lr1e-5", "cnn", "cnn-lr1e-3", "cnn-lr1e-2")] == [
        (8, 1e-5), (8, 1e-4), (8, 1e-3), (8, 1e-2)]  # the lr sweep at batch 8
    assert params(c["mlp"], 3) == (68_851_023, 68_851_023)  # the report's model summaries
    assert params(base, 3) == (9_966_691, 9_966_691)
    assert base.model.kwargs == {"dropout": 0.5} and c["cnn-no-dropout"].model.kwargs == {}
    from bench.techniques.offline import copies
    assert len(copies(base.train.offline, base.train.offline_random)) == 8  # 3,312 -> 26,496 images
    transfer = {k for k in c if k.endswith("-transfer")}
    assert transfer == {"vgg16-transfer", "resnet50-transfer", "efficientnet_b2-transfer"}
    assert all(c[k].model.freeze == "last:1" and c[k].model.pretrained is True for k in transfer)


def test_offline_copies_flip_deterministically_then_augment_each_copy(tmp_path):
    from bench.data.loaders import ArrayDataset
    from bench.techniques import build_augment
    from bench.techniques.offline import OfflineAugmented, copies

    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    base = ArrayDataset(packed(tmp_path / "cache", images), np.arange(3), np.arange(3), 16, 16)
    ds = OfflineAugmented(base, copies(["identity", "hflip", "vflip", "hvflip"], 1),
                          build_augment("rotate:15", 16), seed=0)
    assert len(ds) == 24 and ds.labels.tolist() == [0, 1, 2] * 8
    x, _ = ds.__getitems__(list(range(24)))
    orig = torch.from_numpy(images).permute(0, 3, 1, 2)
    flips = [orig, orig.flip(-1), orig.flip(-2), orig.flip(-1).flip(-2)]
    for k, flipped in enumerate(flips):  # block 2k: the fixed copy; block 2k + 1: it, randomly rotated
        assert torch.equal(x[6 * k:6 * k + 3], flipped)
        assert not torch.equal(x[6 * k + 3:6 * k + 6], flipped)
    again, _ = ds.__getitems__(list(range(24)))
    assert torch.equal(x, again)  # the same enlarged set every epoch
    assert copies(4) == [("identity", False)] + [("identity", True)] * 3  # offline = K as before


# ----------------------------------------------------------------------------------------- bench predict
def test_predict_on_an_unlabelled_folder_gives_the_cells_own_test_predictions(write_suite, cli, tmp_path):
    """Run over the test split's own images as an unlabelled folder, a finished cell's best weights give the
    logits its record holds for them, and the CSV names each image."""
    import csv
    import json

    path = write_suite("[train]\nepochs = 1\n", base="[suite]\nname = 'p'\n[data]\nimage_size = 16\n"
                       "[data.synthetic]\nclasses = 3\nimages = 60\nsize = 16\n")
    assert cli("run", path, "--results", tmp_path / "r")[0] == 0
    suite_dir = tmp_path / "r" / "p"
    (cell_dir,) = [p for p in suite_dir.iterdir() if (p / "result.json").is_file()]
    result = json.loads((cell_dir / "result.json").read_text())
    files = json.loads((suite_dir / "splits" / f"{result['data']['split_key']}.json").read_text())["test"]
    root = Path(result["data"]["root"])
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for f in files:
        (folder / Path(f).name).write_bytes((root / f).read_bytes())
    out = tmp_path / "sub.csv"
    code, _, err = cli("predict", str(cell_dir), "--images", folder, "--out", out, "--k", "2")
    assert code == 0, err
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["id", "predicted"] and len(rows) == len(files) + 1
    from bench.export import class_ids, predict_unlabelled
    from bench.store import load_record

    stored = torch.from_numpy(np.load(cell_dir / "predictions.npz")["test_logits"])
    logits = predict_unlabelled(load_record(cell_dir), [folder / Path(f).name for f in files], "cpu")
    assert torch.allclose(logits, stored, atol=1e-4)  # read as the cell's own evaluation read them
    names = class_ids(result["data"]["class_names"])
    best = {Path(f).stem: names[int(stored[i].argmax())] for i, f in enumerate(files)}
    assert all(row[1].split()[0] == best[row[0]] for row in rows[1:])
    code, _, err = cli("predict", str(cell_dir), "--images", tmp_path / "nothing", "--out", out)
    assert code == 2 and "--images" in err
