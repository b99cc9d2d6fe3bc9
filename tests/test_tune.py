"""[tune]: equal budgets per contender, chosen on validation only, tested once; pruning, resume, bad spaces."""

from __future__ import annotations

import io
import json

import numpy as np
import optuna
import pytest

from bench import evaluate, execute
from bench.cell import RunOptions
from bench.config import load_suite
from bench.errors import UserError
from bench.report.load import tuning_notes
from bench.status import cell_states
from bench.store import read_json, write_json
from bench.suite import expand
from bench.tune import contender as tune_contender
from bench.tune import pruning, waves
from tests.conftest import TINY
from tests.support import run_file, scripted_val_errors

BASE = TINY.replace('name = "tiny"', 'name = "tuned"').replace("[train]", '[model]\narch = "bench:mlp"\n\n[train]')


def tune_run(path, results, **options) -> waves.TuneSummary:
    """The tuning run `bench run` makes, with every trial in this process (so that tests can script it)."""
    return run_file(path, results, options=RunOptions(isolate=False, **options), log=io.StringIO())


def records(results) -> dict[str, dict]:
    return {p.stem: read_json(p) for p in sorted((results / "tuned" / "tune").glob("*.json"))}


def trial_dirs(results) -> list:
    return sorted(p.parent for p in (results / "tuned").glob("*/cell.json"))


REAL_FIT = execute.fit  # wrapped afresh by each helper below: a second call replaces the first's wrapper


def count_fits(monkeypatch, on_call=None, after=None) -> list:
    """Every training a trial starts, in order; `on_call(n, cfg)` may script or interrupt it, `after(n, cfg,
    result, test)` may rewrite its result (`test`: whether fit was asked to evaluate test)."""
    calls = []

    def fit(model, loaders, cfg, *args, **kw):
        calls.append(cfg)
        if on_call is not None:
            on_call(len(calls) - 1, cfg)
        result = REAL_FIT(model, loaders, cfg, *args, **kw)
        if after is not None:
            after(len(calls) - 1, cfg, result, kw["test"])
        return result

    monkeypatch.setattr(execute, "fit", fit)
    return calls


def script_val_errors(monkeypatch, scripts: list[list[float]]) -> list:
    """Trial n reports scripts[n][e] as its validation top-1 error after epoch e + 1; count_fits' calls."""
    restart = scripted_val_errors(monkeypatch, [], loss=None)
    return count_fits(monkeypatch, lambda n, cfg: restart(scripts[n]))


def script_results(monkeypatch, val_error) -> list:
    """Trial cell n's validation top-1 error in its result, what its study is told, is val_error(n, cfg) (the
    n-th training this run starts); returns the configs trained, in order."""

    def scripted(n, cfg, result, test):
        assert test is False  # a trial never evaluates test
        result.metrics["val"] = {**result.metrics["val"], "top1_error": val_error(n, cfg)}

    return count_fits(monkeypatch, after=scripted)


SPACE_LR = '''
[tune]
space = {"train.lr" = {choices = [0.001, 0.002, 0.003]}}
trials = 3
sampler = "grid"
'''


def test_selection_is_on_validation_and_only_the_chosen_trial_sees_test_once(monkeypatch, write_suite, tmp_path):
    # scripted so that the best trial on validation (lr 0.002) is the worst on test
    val = {0.001: 0.40, 0.002: 0.20, 0.003: 0.30}
    test = {0.001: 0.10, 0.002: 0.50, 0.003: 0.30}
    real_eval, real_full = tune_contender.evaluate_test, evaluate.full_metrics
    script_results(monkeypatch, lambda n, cfg: val[cfg.lr])
    tested = []

    def evaluate_spy(cell, *args):
        tested.append(cell.id)
        monkeypatch.setattr(evaluate, "full_metrics", lambda lo, la: {**real_full(lo, la),
                                                                    "top1_error": test[cell.config.train.lr]})
        return real_eval(cell, *args)

    monkeypatch.setattr(tune_contender, "evaluate_test", evaluate_spy)
    path = write_suite(SPACE_LR + '[grid]\n"train.weight_decay" = [0.0, 0.01]\n', base=BASE)
    summary = tune_run(path, tmp_path)

    recs = records(tmp_path)
    assert len(recs) == 2 and len(summary.contenders) == 2 and not summary.failed
    for contender, rec in recs.items():
        assert rec["budget"] == 3 and len(rec["trials"]) == 3 and rec["cost"]["trials"] == 3
        assert all(t["state"] == "complete" for t in rec["trials"])
        # the grid sampler covers its grid, one point per trial
        assert sorted(t["params"]["train.lr"] for t in rec["trials"]) == [0.001, 0.002, 0.003]
        best = next(t for t in rec["trials"] if t["params"]["train.lr"] == 0.002)
        assert rec["chosen"] == best["cell"] and best["value"] == pytest.approx(0.20)
        assert rec["test"]["top1_error"] == pytest.approx(0.50)  # not the trial best on test (lr 0.001)
        assert rec["cost"]["train_time_s"] > 0 and rec["cost"]["tuning_overhead_s"] > 0
        for t in rec["trials"]:
            cell_dir = tmp_path / "tuned" / t["cell"]
            cell = read_json(cell_dir / "cell.json")
            assert cell["tune"] == {"contender": contender, "label": rec["label"], "trial": t["number"],
                                    "params": t["params"]}
            result = read_json(cell_dir / "result.json")
            arrays = np.load(cell_dir / "predictions.npz").files
            if t["cell"] == rec["chosen"]:
                assert result["metrics"]["test"]["top1_error"] == pytest.approx(0.50)
                assert {"test_logits", "test_labels", "test_confusion"} <= set(arrays)
            else:
                assert "test" not in result["metrics"] and not any(a.startswith("test") for a in arrays)
    assert sorted(tested) == sorted(r["chosen"] for r in recs.values())  # once each, the chosen alone

    calls = count_fits(monkeypatch)
    tune_run(path, tmp_path)  # all done: nothing trains, test is not looked at again
    assert calls == []
    assert sorted(tested) == sorted(r["chosen"] for r in recs.values())


SPACE_RANDOM = '''
[tune]
space = {"train.lr" = {low = 1e-3, high = 1e-2, log = true}}
trials = {trials}
sampler = "random"
seed = 3
'''


def test_a_resumed_tuning_run_redoes_nothing_and_finishes_the_interrupted_trial(monkeypatch, write_suite,
                                                                                 tmp_path):
    path = write_suite(SPACE_RANDOM.replace("{trials}", "3"), base=BASE)

    def interrupt_second(n, cfg):
        if n == 1:
            raise KeyboardInterrupt  # killed during trial 1, after trial 0 finished

    calls = count_fits(monkeypatch, interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        tune_run(path, tmp_path)
    assert len(calls) == 2 and len(trial_dirs(tmp_path)) == 2
    first = [d for d in trial_dirs(tmp_path) if (d / "result.json").is_file()]
    assert len(first) == 1
    stamp = (first[0] / "best.safetensors").stat().st_mtime_ns  # a test evaluation rewrites result.json
    study = optuna.load_study(study_name=expand(load_suite(path))[0].id,
                              storage=pruning.journal(next((tmp_path / "tuned" / "tune").glob("*.journal"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    interrupted_lr = study.trials[1].params["train.lr"]

    calls = count_fits(monkeypatch)
    tune_run(path, tmp_path)
    assert len(calls) == 2 and calls[0].lr == interrupted_lr  # the running trial first, with its values
    assert (first[0] / "best.safetensors").stat().st_mtime_ns == stamp  # trial 0 not trained again
    (rec,) = records(tmp_path).values()
    assert [t["number"] for t in rec["trials"]] == [0, 1, 2] and len(trial_dirs(tmp_path)) == 3
    assert all(t["state"] == "complete" for t in rec["trials"]) and rec["chosen"] is not None

    calls = count_fits(monkeypatch)
    tune_run(path, tmp_path)
    assert calls == []
    path.write_text(path.read_text().replace("trials = 3", "trials = 4"))  # a raised budget adds one trial
    tune_run(path, tmp_path)
    assert len(calls) == 1 and len(trial_dirs(tmp_path)) == 4
    (rec,) = records(tmp_path).values()
    assert len(rec["trials"]) == 4 and rec["chosen"] is not None


def test_a_choice_changed_by_a_raised_budget_withdraws_the_earlier_test_and_the_report_says_so(
        monkeypatch, write_suite, tmp_path):
    # the third trial, which a raised budget adds, beats the one chosen and tested after two
    script_results(monkeypatch, lambda n, cfg: [0.4, 0.3, 0.1][n])
    path = write_suite(SPACE_RANDOM.replace("{trials}", "2"), base=BASE)
    tune_run(path, tmp_path)
    (first,) = records(tmp_path).values()
    earlier = tmp_path / "tuned" / first["chosen"]
    assert first["chosen"] == first["trials"][1]["cell"] and first["test_looks"] == 1
    assert read_json(earlier / "result.json")["metrics"]["test"] == first["test"]

    path.write_text(path.read_text().replace("trials = 2", "trials = 3"))
    summary = tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    assert rec["chosen"] == rec["trials"][2]["cell"] and rec["test"] is not None
    # the earlier choice's test figures are no longer in its cell, as if valid; the record keeps them
    assert not any(k.startswith("test") for k in read_json(earlier / "result.json")["metrics"])
    assert not any(a.startswith("test") for a in np.load(earlier / "predictions.npz").files)
    assert rec["superseded_tests"] == [{"trial": 1, "cell": first["chosen"], "metrics": {"test": first["test"]}}]
    assert rec["test_looks"] == 2 and "test split seen 2 times" in waves.describe(summary.contenders[0])
    (note,) = [n for n in tuning_notes(tmp_path / "tuned") if n.startswith("test seen")]
    assert "test seen 2 times" in note and rec["label"] in note and "trial 1" in note


def test_a_kill_while_the_new_choice_is_tested_keeps_the_record_of_the_earlier_look(monkeypatch, write_suite,
                                                                                       tmp_path):
    script_results(monkeypatch, lambda n, cfg: [0.4, 0.3, 0.1][n])
    path = write_suite(SPACE_RANDOM.replace("{trials}", "2"), base=BASE)
    tune_run(path, tmp_path)
    (first,) = records(tmp_path).values()
    path.write_text(path.read_text().replace("trials = 2", "trials = 3"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tune_contender, "evaluate_test", killed)
        with pytest.raises(KeyboardInterrupt):
            tune_run(path, tmp_path)
    tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    assert rec["superseded_tests"] == [{"trial": 1, "cell": first["chosen"], "metrics": {"test": first["test"]}}]
    assert rec["test_looks"] == 2 and rec["test"] is not None


def test_sequential_tuning_proposes_the_same_trials_given_the_seed(write_suite, tmp_path):
    path = write_suite(SPACE_RANDOM.replace("{trials}", "2").replace('"random"', '"tpe"'), base=BASE)
    for folder in ("a", "b"):
        tune_run(path, tmp_path / folder)
    (a,), (b,) = records(tmp_path / "a").values(), records(tmp_path / "b").values()
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]
    assert [t["cell"] for t in a["trials"]] == [t["cell"] for t in b["trials"]]


@pytest.mark.parametrize("space", [
    # TPE models from the second trial on, so the third one's values depend on the trials before it too
    SPACE_RANDOM.replace('"random"', '"tpe"') + "startup_trials = 1\n",
    SPACE_LR.replace("trials = 3", "trials = {trials}").replace("{choices = [0.001, 0.002, 0.003]}",
                                                                "{low = 0.001, high = 0.01, step = 0.001}"),
], ids=["tpe", "grid"])
def test_a_killed_then_extended_tuning_run_proposes_the_trials_of_an_uninterrupted_one(monkeypatch, write_suite,
                                                                                     tmp_path, space):
    path = write_suite(space.replace("{trials}", "3"), base=BASE)
    tune_run(path, tmp_path / "straight")

    def interrupt_second(n, cfg):
        if n == 1:
            raise KeyboardInterrupt

    count_fits(monkeypatch, interrupt_second)
    path = write_suite(space.replace("{trials}", "2"), base=BASE)
    with pytest.raises(KeyboardInterrupt):  # killed during trial 1 of 2
        tune_run(path, tmp_path / "steps")
    count_fits(monkeypatch)
    tune_run(path, tmp_path / "steps")  # resumed: trial 1 finishes
    path = write_suite(space.replace("{trials}", "3"), base=BASE)
    tune_run(path, tmp_path / "steps")  # a raised budget: trial 2 is asked for
    (straight,), (steps,) = records(tmp_path / "straight").values(), records(tmp_path / "steps").values()
    assert [t["params"] for t in steps["trials"]] == [t["params"] for t in straight["trials"]]
    assert len({t["params"]["train.lr"] for t in straight["trials"]}) == 3


def test_the_median_pruner_prunes_a_hopeless_trial_and_its_record_says_so(monkeypatch, write_suite, tmp_path):
    # Optuna's median pruner waits for 5 finished trials; the sixth is far worse after its first epoch
    calls = script_val_errors(monkeypatch, [[0.5, 0.4]] * 5 + [[0.9, 0.9]])
    path = write_suite(SPACE_RANDOM.replace("{trials}", "6") + 'pruner = "median"\nwarmup_epochs = 1\n', base=BASE)
    tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    assert [t["state"] for t in rec["trials"]] == ["complete"] * 5 + ["pruned"]
    assert rec["cost"]["pruned"] == 1 and rec["chosen"] != rec["trials"][5]["cell"]
    pruned = tmp_path / "tuned" / rec["trials"][5]["cell"]
    result = read_json(pruned / "result.json")
    assert result["status"] == "pruned" and result["epoch"] == 1 and "test" not in json.dumps(result)
    assert len(result["history"]) == 1 and (pruned / "history.csv").is_file()
    assert not (pruned / "checkpoint.pt").exists()
    assert cell_states(tmp_path / "tuned", [(pruned.name, "")])[0]["state"] == "pruned"

    calls.clear()
    tune_run(path, tmp_path)  # final: a rerun does not train it on
    assert calls == []


@pytest.mark.parametrize(("space", "key", "says"), [
    ('{"train.lrr" = {low = 1e-4, high = 1e-1}}', 'tune.space."train.lrr"', "did you mean 'lr'"),
    ('{"train.epochs" = {low = 1.0, high = 5.0}}', 'tune.space."train.epochs"', "integer"),
    ('{"train.lr" = {low = -1.0, high = 1.0}}', 'tune.space."train.lr"', "greater than 0"),
    ('{"train.optimizer" = {choices = ["adam", "adamm"]}}', 'tune.space."train.optimizer"', "adamm"),
    ('{"model.head_hidden" = {choices = [[], [8]]}, "train.lr" = {low = 1e-3, high = 1e-2, step = 1e-3}}',
     "tune.trials", "the grid has 20 point(s)"),
    ('{"train.monitor" = {choices = ["val_error", "val_loss"]}}', 'tune.space."train.monitor"', "tune.metric"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(cli, write_suite, space, key, says):
    path = write_suite(f'[tune]\nspace = {space}\ntrials = 30\nsampler = "grid"\n'
                       if "step" in space else f"[tune]\nspace = {space}\ntrials = 2\n", base=BASE)
    code, out, err = cli("plan", path, "--no-data")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and key in err and says in err


def test_plan_lists_contenders_and_a_smoke_run_tunes_each_with_two_trials_in_parallel(cli, write_suite, tmp_path):
    path = write_suite('[grid]\n"train.weight_decay" = [0.0, 0.01]\n' + SPACE_RANDOM.replace("{trials}", "5")
                       + 'pruner = "median"\n', base=BASE)
    code, out, err = cli("plan", path, "--no-data")
    assert code == 0, err
    assert "2 contender(s), 5 trials each over train.lr" in out
    code, out, err = cli("run", path, "--smoke", "--jobs", "2", "--results", tmp_path)  # trials in children
    assert code == 0, err
    assert err.count("chose trial") == 2 and "4 trial(s) ran, 0 finished earlier, 0 failed" in err
    recs = {p.stem: read_json(p) for p in (tmp_path / "tuned-smoke" / "tune").glob("*.json")}
    assert len(recs) == 2 and all(len(r["trials"]) == 2 and r["chosen"] for r in recs.values())
    for rec in recs.values():
        for t in rec["trials"]:
            assert read_json(tmp_path / "tuned-smoke" / t["cell"] / "cell.json")["tune"]["trial"] == t["number"]
    code, out, err = cli("status", path, "--smoke", "--results", tmp_path)
    assert code == 0 and out.count("| tuned ") == 2 and out.count("2 of 2 trials finished") == 2
    code, out, err = cli("run", path, "--smoke", "--results", tmp_path)  # all tuned: the summary says so
    assert code == 0 and "0 trial(s) ran, 4 finished earlier, 0 failed" in err, err


def test_tuning_on_val_loss_takes_each_trials_epoch_of_lowest_val_loss(monkeypatch, write_suite, tmp_path):
    # epoch 1 has the lower validation error, epoch 2 the lower validation loss
    scripted_val_errors(monkeypatch, [0.3, 0.5], loss=[2.0, 1.0])
    path = write_suite(SPACE_RANDOM.replace("{trials}", "1") + 'metric = "val_loss"\n', base=BASE)
    tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    (trial,) = rec["trials"]
    result = read_json(tmp_path / "tuned" / trial["cell"] / "result.json")
    assert result["best_epoch"] == 2 and trial["value"] == result["metrics"]["val"]["loss"]


def test_a_study_whose_trials_ran_as_other_cells_is_refused(write_suite, tmp_path):
    path = write_suite(SPACE_RANDOM.replace("{trials}", "1"), base=BASE)
    tune_run(path, tmp_path)
    path.write_text(path.read_text() + 'metric = "val_loss"\n')  # its trials would monitor another figure
    with pytest.raises(UserError, match=r"\.journal: trial 0 ran as cell .*; start this tuning over"):
        tune_run(path, tmp_path)


@pytest.mark.parametrize(("monitor", "metric", "refused"), [
    ("val_top5_error", "val_error", True), ("val_accuracy", "val_loss", True), ("val_accuracy", "val_error", False)])
def test_a_monitor_that_picks_other_epochs_than_the_tuned_metric_is_refused(cli, write_suite, monitor, metric,
                                                                           refused):
    path = write_suite(SPACE_RANDOM.replace("{trials}", "1") + f'metric = "{metric}"\n',
                       base=BASE.replace("[train]", f'[train]\nmonitor = "{monitor}"'))
    code, out, err = cli("plan", path, "--no-data")
    if refused:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "tune.metric" in err and monitor in err
    else:
        assert code == 0, err


@pytest.mark.parametrize(("startup", "third"), [(2, "pruned"), (5, "complete")])
def test_pruner_startup_trials_is_how_many_finished_trials_the_median_pruner_waits_for(
        monkeypatch, write_suite, tmp_path, startup, third):
    script_val_errors(monkeypatch, [[0.5, 0.4], [0.5, 0.4], [0.9, 0.9]])
    path = write_suite(SPACE_RANDOM.replace("{trials}", "3") + f'pruner = "median"\npruner_startup_trials = {startup}\n',
                       base=BASE)
    tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    assert [t["state"] for t in rec["trials"]] == ["complete", "complete", third]


def test_a_trial_with_the_suites_own_values_is_not_its_contender(write_suite, tmp_path):
    # the grid holds the suite's own learning rate: that trial's config is the contender's
    lr = expand(load_suite(write_suite(base=BASE)))[0].config.train.lr
    path = write_suite(f'[tune]\nspace = {{"train.lr" = {{choices = [{lr}]}}}}\ntrials = 1\nsampler = "grid"\n',
                       base=BASE)
    (contender,) = expand(load_suite(path))
    tune_run(path, tmp_path)
    (rec,) = records(tmp_path).values()
    (trial,) = rec["trials"]
    assert trial["params"] == {"train.lr": lr} and trial["cell"] != contender.id
    assert cell_states(tmp_path / "tuned", [(contender.id, "")])[0]["state"] == "tuned"
    # an older bench gave such a trial the contender's id: its folder does not make the contender that trial
    write_json(tmp_path / "tuned" / contender.id / "result.json", {"status": "pruned"})
    assert cell_states(tmp_path / "tuned", [(contender.id, "")])[0]["state"] == "tuned"
