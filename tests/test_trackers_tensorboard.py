"""The TensorBoard tracker, read back with TensorBoard's own readers: the EventAccumulator for one run's
folder, and the HParams plugin's backend for what its view makes of a suite's runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

from bench.config.suite import Log
from bench.trackers.base import TRACKERS, CellRun, Ending
from bench.trackers.tensorboard import TensorBoard

ROWS = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2.0 / e, "train_error": 0.5 / e, "val_loss": 2.5 / e,
         "val_error": 0.6 / e, "val_top5_error": 0.2 / e, "train_seconds": 1.5, "train_images": 48.0,
         "val_seconds": 0.25, "val_error_ema": 0.55 / e, "epochs_since_best": 0.0} for e in (1, 2, 3)]
TAGS = {"lr", "train/loss", "train/error", "val/loss", "val/error", "val/top5_error", "train/seconds",
        "train/images", "val/seconds", "val/error_ema", "epochs_since_best"}


def cell(label="lr=0.1 arch=resnet18", id="a1b2c3d4e5", params=None, **kw) -> CellRun:
    params = {"optim.lr": 0.1, "model.arch": "resnet18", "model.pretrained": True, "train.epochs": 3,
              "data.mean": "[0.5, 0.5, 0.5]"} if params is None else params
    return CellRun(id=id, label=label, suite="tiny", seed=0, config={}, params=params, dir=Path("."), **kw)


def board(tmp_path, target=True) -> TensorBoard:
    return TensorBoard(target, Log(tensorboard=target), tmp_path, "tiny")


def read(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))  # this folder's own event files: sub-folders are other runs
    events.Reload()
    return events


def series(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_epochs_are_scalars_at_their_epoch(tmp_path):
    tb = board(tmp_path)
    assert TRACKERS["tensorboard"] is TensorBoard
    assert tb.destination == f"tensorboard:{tmp_path / 'tensorboard'}"
    run = tb.start(cell(), None, 0)
    assert run.id == "tiny/lr=0.1_arch=resnet18__a1b2c3d4"
    run.log_epochs(ROWS[:2])
    events = read(tmp_path / "tensorboard" / run.id)  # before any close: each call flushes
    assert [s for s, _ in series(events, "val/error")] == [1, 2]
    run.log_epochs([{**ROWS[2], "note": "not a number", "test_error": ""}])
    events = read(tmp_path / "tensorboard" / run.id)
    assert set(events.Tags()["scalars"]) == TAGS
    for column, name in (("train_loss", "train/loss"), ("lr", "lr"), ("val_top5_error", "val/top5_error")):
        assert series(events, name) == [(r["epoch"], pytest.approx(r[column])) for r in ROWS]
    tb.close()
    assert run.writer is None and not tb.runs
    with pytest.raises(RuntimeError):
        run.log_epochs(ROWS[:1])


def test_finish_writes_the_hparams_session_into_the_run_itself(tmp_path):
    tb = board(tmp_path)
    run = tb.start(cell(), None, 0)
    run.log_epochs(ROWS)
    run.finish(Ending("ok", None, {"val.top1_error": 0.2, "test.top1_error": 0.25, "cost.train_time_s": 4.5}))
    folder = tmp_path / "tensorboard" / run.id
    assert all(p.is_file() for p in folder.iterdir())  # no timestamped sub-run as add_hparams makes
    events = read(folder)
    assert series(events, "final/test.top1_error") == [(3, pytest.approx(0.25))]
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.EXPERIMENT_TAG not in content
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values == {"optim.lr": pytest.approx(0.1), "model.arch": "resnet18", "model.pretrained": "true",
                      "train.epochs": 3.0, "data.mean": "[0.5, 0.5, 0.5]", "seed": 0.0, "status": "ok"}
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    assert run.writer is None and not tb.runs


def hparams_view(folder: Path) -> tuple[api_pb2.Experiment, list[str]]:
    """The experiment TensorBoard's HParams view shows for `folder`, and its runs."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    runs = plugin_event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory(str(folder))
    runs.Reload()
    hp = backend_context.Context(base_plugin.TBContext(
        data_provider=data_provider.MultiplexerDataProvider(runs, str(folder)), logdir=str(folder)))
    request = context.RequestContext()
    found = hp.hparams_metadata(request, "")
    return hp.experiment_from_metadata(request, "", True, found, None), sorted(runs.Runs())


def test_the_hparams_view_compares_the_cells_of_a_suite(tmp_path):
    tb = board(tmp_path)
    ok = tb.start(cell(), None, 0)
    failed = tb.start(cell("lr=1", "ffff000011", {"optim.lr": 1.0, "optim.momentum": 0.9}), None, 0)
    for run in (ok, failed):
        run.log_epochs(ROWS[:1])
    # the failed cell, first to end and with no final figures, hides no column from the view
    failed.finish(Ending("diverged", "loss 1e9 at epoch 1", {}))
    ok.finish(Ending("ok", None, {"val.top1_error": 0.2}))
    experiment, runs = hparams_view(tmp_path / "tensorboard")
    assert runs == ["tiny/lr=0.1_arch=resnet18__a1b2c3d4", "tiny/lr=1__ffff0000"]
    assert {h.name for h in experiment.hparam_infos} == {"optim.lr", "optim.momentum", "model.arch", "seed",
                                                         "model.pretrained", "train.epochs", "data.mean",
                                                         "status"}
    assert {m.name.tag for m in experiment.metric_infos} == TAGS | {"final/val.top1_error"}
    events = read(tmp_path / "tensorboard" / failed.id)
    end = metadata.parse_session_end_info_plugin_data(
        events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE
    assert [tensor_util.make_ndarray(t.tensor_proto).tolist() for t in events.Tensors("status/text_summary")] \
        == [[b"diverged: loss 1e9 at epoch 1"]]


def test_a_resumed_run_drops_what_a_killed_writer_sent_after_the_last_sync(tmp_path):
    # Event files are read in name order, ...<second>.<host>.<pid>.<counter>: make the two writers' counters
    # 9 and 10 (or 99 and 100...), whose text order is not their order, as in one second they would be.
    n = event_file_writer._global_uid.get()
    while set(str(n + 1)) != {"9"}:
        n = event_file_writer._global_uid.get()
    tb = board(tmp_path)
    first = tb.start(cell(), None, 0)
    first.log_epochs(ROWS)  # epochs 1..3 written, but the cell's folder only knew of 2 when it was killed
    first.suspend()
    again = tb.start(cell(), first.id, logged=2)
    assert again.id == first.id
    again.log_epochs([{**ROWS[2], "val_error": 0.123}, {**ROWS[2], "epoch": 4, "val_error": 0.1}])
    again.finish(Ending("ok", None, {"val.top1_error": 0.1}))
    folder = tmp_path / "tensorboard" / first.id
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    events = read(folder)
    assert series(events, "val/error") == [(1, pytest.approx(0.6)), (2, pytest.approx(0.3)),
                                           (3, pytest.approx(0.123)), (4, pytest.approx(0.1))]
    assert [s for s, _ in series(events, "train/loss")] == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        tb.start(cell(), "../elsewhere", 0)


def test_folders_trials_and_a_second_new_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tb = board(tmp_path / "results", target="tb")  # a folder of one's own, relative to the working directory
    assert tb.destination == f"tensorboard:{tmp_path / 'tb'}"
    contender = tb.start(cell("a/b c,d=1", "c0c0c0c0c0"), None, 0)
    trial = tb.start(cell("a/b c,d=1 trial 3", "7777777777", contender="c0c0c0c0c0",
                          contender_label="a/b c,d=1", trial=3), None, 0)
    again = tb.start(cell("a/b c,d=1", "c0c0c0c0c0"), None, 0)
    tb.close()
    assert contender.id == "tiny/a_b_c,d=1__c0c0c0c0"
    assert trial.id == "tiny/a_b_c,d=1/a_b_c,d=1_trial_3__77777777"  # beside the contender's run, not in it
    assert again.id == "tiny/a_b_c,d=1__c0c0c0c0-2"  # a new run never appends to an existing one's events
    for run in (contender, trial, again):
        assert list((tmp_path / "tb" / run.id).glob("events.out.tfevents.*"))
    assert not (tmp_path / "results").exists()
