"""`bench report` over 10,000 cell records (the issue's target: under 2 seconds).

The records are generated in a temporary folder, shaped like the runner's (cell.json with the resolved
config, result.json with metrics, cost, data curation and environment). The baseline is the floor any
report pays: reading and parsing every cell.json and result.json in a plain loop. The benchmark reports
both times and their ratio. It asserts the ratio (a report may cost at most MAX_RATIO x the bare reading),
which holds on any machine; the issue's absolute target (2 s for the whole report) depends on the disk
and CPU, so it is reported, not asserted: reading alone takes 1.6-3 s on the shared 2-core CI VM.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest

from bench import SCHEMA_VERSION
from bench.report import render

CELLS = 10_000
TARGET_S = 2.0
MAX_RATIO = 2.0
ROUNDS = 5


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed") / "big"
    root.mkdir()
    (root / "suite.toml").write_text('[suite]\nname = "big"\n')
    classes = [f"{i:03d}_species" for i in range(100)]
    for i in range(CELLS):
        arch, seed = f"arch{i // 4:04d}", i % 4
        config = {"seed": seed, "model": {"arch": arch, "freeze": "none", "pretrained": False},
                  "data": {"image_size": 32, "source": "synthetic", "split": [0.7, 0.15, 0.15]},
                  "train": {"epochs": 10, "lr": 0.01, "optimizer": "sgd", "batch_size": 64}}
        err = 0.2 + (i % 97) / 200
        result = {"schema_version": SCHEMA_VERSION, "status": "ok", "best_epoch": 10, "epochs_run": 10,
                  "metrics": {s: {"top1_error": err, "top5_error": err / 3, "loss": 1.0, "f1_macro": 1 - err,
                                  "f1_weighted": 1 - err, "auc_macro": 0.9, "map": 0.5} for s in ("val", "test")},
                  "cost": {"train_time_s": 10.0 + i % 13, "train_images_per_s": 1000.0, "peak_rss_mb": 900.0,
                           "params_total": 10_000 + i, "params_trainable": 10_000 + i, "gflops_forward": 0.1,
                           "time_per_epoch_s": 1.0, "eval_images_per_s": 3000.0, "wall_time_s": 12.0},
                  "data": {"split_key": "k", "class_names": classes, "train_class_counts": list(range(100)),
                           "images": {"train": 1400, "val": 300, "test": 300}},
                  "env": {"device_name": "AMD EPYC", "torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31",
                          "python": "3.11.7", "device": "cpu"}}
        d = root / f"{i:010x}"
        d.mkdir()
        (d / "cell.json").write_text(json.dumps({"id": d.name, "group": arch, "label": f"arch={arch}",
                                                 "axes": {"model.arch": arch}, "config": config}, indent=2))
        (d / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return root


def _read_all(suite_dir) -> int:
    """The baseline: every record read and parsed, nothing else."""
    n = 0
    for d in sorted(suite_dir.iterdir()):
        if d.is_dir():
            json.loads((d / "cell.json").read_bytes())
            json.loads((d / "result.json").read_bytes())
            n += 1
    return n


def test_report_10k_records(benchmark, suite_dir):
    baseline: list[float] = []

    def read_first():  # untimed by the benchmark: the baseline, measured just before each report round
        start = time.perf_counter()
        assert _read_all(suite_dir) == CELLS
        baseline.append(time.perf_counter() - start)

    text = benchmark.pedantic(render, args=(suite_dir, "markdown"), setup=read_first, rounds=ROUNDS, iterations=1)
    assert text.count("\n|") == 2 + CELLS // 4  # header, rule, one row per arch (four seeds averaged)
    report_s, read_s = benchmark.stats.stats.min, min(baseline)
    benchmark.extra_info.update({"report_s": report_s, "read_json_s": read_s, "ratio": report_s / read_s})
    verdict = "meets" if report_s < TARGET_S else "MISSES"
    print(f"\nreport of {CELLS} records: {report_s:.2f} s ({verdict} the {TARGET_S} s target; median of rounds "
          f"{statistics.median(benchmark.stats.stats.data):.2f} s); reading the JSON alone: {read_s:.2f} s; "
          f"ratio {report_s / read_s:.2f}")
    assert report_s / read_s <= MAX_RATIO, f"report costs {report_s / read_s:.2f}x reading the records"
