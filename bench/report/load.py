"""Reading cell records into one table: the report's columns, filters over config keys, metrics missing
from result.json filled from predictions.npz, and tuned suites read as one row per contender.

A tuned suite's trial cells are ordinary cell folders (cell.json has "tune": {contender, trial, params});
results/<suite>/tune/<contender id>.json is the contender's study: its label and axes, the space, every
trial, the chosen trial and the cost. The report shows the chosen trial under the contender's label and
leaves the other trials out: they were only ever judged on validation."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.compare import read_predictions
from bench.directions import HIGHER_IS_BETTER
from bench.errors import UserError, did_you_mean
from bench.store import RUN, SUITE_FILE, TUNE, load_records, read_history, read_json
from bench.suite import DATASET


@dataclass(frozen=True)
class Column:
    header: str
    path: tuple[str, ...]  # where in result.json; () for a value derived from others
    digits: int
    metric: str  # key of HIGHER_IS_BETTER: the column's direction
    timing: bool = False  # depends on the device and library versions: never ranked across them
    integer: bool = False  # a count: csv and json write it as an integer when every value is one
    ranked: bool = True  # False: a count with no better direction (trials): never bold

    @property
    def higher(self) -> bool:
        """Whether higher is better (bench.directions)."""
        return HIGHER_IS_BETTER.get(self.metric, False)


_SPLIT_METRICS = (  # (suffix, key in result.json["metrics"][split], header)
    ("error", "top1_error", "err"), ("top5_error", "top5_error", "top-5 err"), ("loss", "loss", "loss"),
    ("f1_macro", "f1_macro", "macro F1"), ("f1_weighted", "f1_weighted", "weighted F1"),
    ("auc", "auc_macro", "macro AUC"), ("map", "map", "mAP"),
)
COLUMNS: dict[str, Column] = {
    f"{split}_{suffix}": Column(f"{split} {header}", ("metrics", split, key), 3, key)
    for split in ("val", "test") for suffix, key, header in _SPLIT_METRICS
}
COLUMNS.update({
    "train_time_s": Column("train s", ("cost", "train_time_s"), 1, "train_time_s", timing=True),
    "time_per_epoch_s": Column("s/epoch", ("cost", "time_per_epoch_s"), 1, "time_per_epoch_s", timing=True),
    # torch.compile's graph building, measured apart so that train_time_s compares with uncompiled cells
    "compile_time_s": Column("compile s", ("cost", "compile_time_s"), 1, "compile_time_s", timing=True),
    "train_images_per_s": Column("train img/s", ("cost", "train_images_per_s"), 0, "train_images_per_s", True),
    "eval_images_per_s": Column("eval img/s", ("cost", "eval_images_per_s"), 0, "eval_images_per_s", True),
    "time_to_target_s": Column("s to target", (), 1, "time_to_target_s", timing=True),
    "gflops_per_s": Column("GFLOP/s", (), 1, "gflops_per_s", timing=True),
    "gflops": Column("GFLOPs", ("cost", "gflops_forward"), 3, "gflops_forward"),
    "peak_rss_mb": Column("peak RSS MB", ("cost", "peak_rss_mb"), 0, "peak_rss_mb"),
    "peak_rss_anon_mb": Column("peak anon RSS MB", ("cost", "peak_rss_anon_mb"), 0, "peak_rss_anon_mb"),
    "peak_cuda_mb": Column("peak CUDA MB", ("cost", "peak_cuda_mb"), 0, "peak_cuda_mb"),
    "peak_cuda_reserved_mb": Column("peak CUDA reserved MB", ("cost", "peak_cuda_reserved_mb"), 0,
                                    "peak_cuda_reserved_mb"),
    "params_total": Column("params", ("cost", "params_total"), 0, "params_total", integer=True),
    "params_trainable": Column("trainable", ("cost", "params_trainable"), 0, "params_trainable", integer=True),
    # a tuned contender's search, from its study file (bench.store.TUNE), on the row of its chosen trial
    "trials": Column("trials", ("tune", "trials"), 0, "trials", integer=True, ranked=False),
    "pruned": Column("pruned", ("tune", "pruned"), 0, "pruned", integer=True, ranked=False),
    "tuning_time_s": Column("tuning s", ("tune", "tuning_time_s"), 1, "tuning_time_s", timing=True),
})
DEFAULT_COLUMNS = ("trials", "pruned", "tuning_time_s", "val_error", "test_error", "test_top5_error", "train_time_s",
                   "compile_time_s", "train_images_per_s", "peak_rss_mb", "params_total", "params_trainable", "gflops")
SORT_BY = "val_error"
REACHED = "time_to_target_reached"  # beside time_to_target_s: 1 reached, 0 never did, missing without a history
FIELDS = ("suite", "id", "group", "label", "seed", "status", "device", "dataset")  # filter/pivot keys besides config
DATASET_AXIS = f"axis:{DATASET}"  # the column a row's data set name is in
PARAM = "param:"  # frame columns of a tuned contender's chosen values, param:train.lr


def _get(d: Any, path: Sequence[str]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _text(value: Any) -> str:
    """A config value as a user types it in TOML, for filters and pivot labels."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _env(result: dict) -> str:
    """Where a cell ran, as the cost columns' marks name it: its device (times a cell of several ranks: 2 x
    NVIDIA H100 ...), and the libraries."""
    env = result.get("env") or {}
    libs = ", ".join(f"{k} {env[k]}" for k in ("torch", "torchvision", "timm") if env.get(k))
    ranks = env.get("world_size") or 1
    device = f"{ranks} x {env.get('device_name', '?')}" if ranks > 1 else str(env.get("device_name", "?"))
    return f"{device} ({libs})" if libs else device


def _key_value(key: str, suite: str, cell: dict, result: dict) -> Any:
    if key == "suite":
        return suite
    if key == "device":
        return _get(result, ("env", "device_name"))
    if key == "status":
        return result.get("status")
    if key in ("id", "group", "label"):
        return cell[key]
    if key == DATASET:
        return cell["axes"].get(DATASET)
    return _get(cell["config"], key.split("."))  # seed is a config key too


@dataclass(frozen=True)
class Filter:
    """KEY=GLOB (or KEY!=GLOB): KEY is a dotted config key (model.arch, train.lr, data.image_size) or one of
    suite, id, label, seed, status, device; GLOB is an fnmatch pattern over the value as written in TOML."""
    key: str
    pattern: str
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> Filter:
        m = re.fullmatch(r"\s*([\w.:-]+)\s*(!?=)\s*(.*?)\s*", text)
        if not m:
            raise UserError(f"--filter '{text}' is not KEY=GLOB", hint="e.g. --filter 'model.arch=tv:*'")
        return cls(m[1], m[3], m[2] == "!=")

    def keep(self, value: Any) -> bool:
        return fnmatch.fnmatchcase(_text(value), self.pattern) != self.negate


def _check_keys(keys: Iterable[str], cell: dict) -> None:
    """A key that is neither a field nor in the config is a typo: say so instead of matching nothing."""
    for key in keys:
        if key not in FIELDS and _get(cell["config"], key.split(".")) is None:
            known = list(FIELDS) + _dotted(cell["config"])
            if key not in known:
                raise UserError(f"unknown key '{key}'", hint=did_you_mean(key, known))


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def labelled_suite(suite_dir: Path) -> bool:
    """Whether the suite that ran in `suite_dir` (its copy, suite.toml) names its [[cells]] with labels."""
    try:
        cells = tomllib.loads((Path(suite_dir) / SUITE_FILE).read_text()).get("cells")
    except (OSError, ValueError):  # unreadable, or not TOML: no labels to show
        return False
    return isinstance(cells, list) and any(isinstance(c, dict) and isinstance(c.get("label"), str) for c in cells)


def frame(targets: Path | Sequence[Path], columns: Sequence[str] = DEFAULT_COLUMNS, *, keys: Sequence[str] = (),
          filters: Sequence[Filter] = (), recompute: bool = False, target_error: float | None = None,
          records: bool = False) -> pd.DataFrame:
    """One row per cell record that passes `filters`: suite, id, group, label, labelled (its suite labels
    its [[cells]]), seed, status, error, device, env, dir, split_key, axes (axis:<key>, the values as the config has
    them), `keys` (key:<key>), each of `columns` (with time_to_target_s, also time_to_target_reached) and,
    with `records`, record (the store.Record, for callers such as the plots that need more of it than the
    columns).

    Only on request: 10,000 parsed results kept alive make every garbage collection rescan them, which
    doubles the time of a report that never looks at them again.

    Metric columns missing from result.json (or all of them, with `recompute`) are computed from the
    cell's predictions.npz, so records written before a metric existed still report it.

    A tuned suite's trials appear only as their contender's chosen trial (partial: False) or, while the
    contender is still being tuned, its best trial so far (partial: True), under the contender's label,
    with the chosen values as param:<key> columns."""
    targets = [Path(targets)] if isinstance(targets, str | Path) else [Path(t) for t in targets]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UserError(f"unknown metric '{unknown[0]}'", hint=did_you_mean(unknown[0], COLUMNS))
    if "time_to_target_s" in columns and target_error is None:
        raise UserError("the time_to_target_s column needs --target-error", hint="e.g. --target-error 0.3")
    plain = [(c, COLUMNS[c].path) for c in columns if COLUMNS[c].path]
    derived = [c for c in columns if not COLUMNS[c].path]
    checked = False
    rows = []
    for suite_dir in targets:
        suite, labelled = suite_dir.name, labelled_suite(suite_dir)
        shown = shown_trials(read_studies(suite_dir))
        for record in load_records(suite_dir):
            cell, result = record.cell, record.result
            tuned = None
            if isinstance(cell.get("tune"), dict):  # a trial: shown only as its contender's chosen (or best) one
                if cell["id"] not in shown:
                    continue
                tuned = shown[cell["id"]]
                cell, result = _as_contender(cell, result, *tuned)
            if not checked:
                _check_keys([*keys, *(f.key for f in filters)], cell)
                checked = True
            if not all(f.keep(_key_value(f.key, suite, cell, result)) for f in filters):
                continue
            status = result.get("status")
            row = {"suite": suite, "id": cell["id"], "group": cell["group"], "label": cell["label"],
                   "labelled": labelled, "seed": cell["config"]["seed"], "status": status, "error": result.get("error"),
                   "device": _get(result, ("env", "device_name")), "env": _env(result), "dir": record.dir,
                   "split_key": _get(result, ("data", "split_key"))}
            if records:
                row["record"] = record
            if tuned is not None:
                row["partial"] = tuned[1]
                row.update({f"{PARAM}{k}": v for k, v in cell["tune"].get("params", {}).items()})
            row.update({f"axis:{k}": _text(v) if isinstance(v, list | dict | bool) or v is None else v
                        for k, v in cell["axes"].items()})
            row.update({f"key:{k}": _text(_key_value(k, suite, cell, result)) for k in keys})
            for name, path in plain:
                row[name] = None if recompute and status == "ok" and path[0] == "metrics" else _get(result, path)
            for name in derived:
                row.update(_derived(name, record.dir, result, target_error))
            rows.append(row)
    df = pd.DataFrame(rows)
    # as the config has them: 10 stays 10 where another suite's cells lack the key (a float column otherwise)
    for c in dict.fromkeys(k for r in rows for k in r if k.startswith("axis:")):
        df[c] = pd.Series([r.get(c) for r in rows], index=df.index, dtype=object)
    if len(df):
        _fill_missing_metrics(df, columns, recompute)
    return df


# ---------------------------------------------------------------- tuned suites


def read_studies(suite_dir: Path) -> dict[str, dict]:
    """The tuning studies of a suite, by contender id (empty for a suite that was not tuned)."""
    folder = Path(suite_dir) / TUNE
    if not folder.is_dir():
        return {}
    studies = {}
    for path in sorted(folder.glob("*.json")):
        try:
            study = read_json(path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read this tuning study ({type(e).__name__})", file=path,
                            hint="rerun the tuned suite: bench run SUITE resumes its studies") from None
        if not isinstance(study, dict) or not isinstance(study.get("trials"), list):
            raise UserError("not a tuning study (needs contender, label, trials)", file=path)
        studies[str(study.get("contender", path.stem))] = study
    return studies


def _complete(study: dict) -> list[dict]:
    return [t for t in study["trials"] if t.get("state") == "complete" and t.get("value") is not None]


def shown_trials(studies: dict[str, dict]) -> dict[str, tuple[dict, bool]]:
    """Trial cell id -> (its study, partial): the chosen trial of each finished contender, and for one
    whose tuning has not finished, its best complete trial so far (partial: judged on validation only)."""
    shown = {}
    for study in studies.values():
        if study.get("chosen"):
            shown[study["chosen"]] = (study, False)
        elif done := _complete(study):
            shown[min(done, key=lambda t: t["value"])["cell"]] = (study, True)  # metrics are val_error, val_loss
    return shown


def _tuning_cost(study: dict) -> dict[str, Any]:
    cost, trials = study.get("cost") or {}, study["trials"]
    spent = [cost.get("train_time_s"), cost.get("tuning_overhead_s")]
    if spent[0] is None:
        spent[0] = sum(t.get("train_time_s") or 0.0 for t in trials)
    return {"trials": cost.get("trials", len(trials)),
            "pruned": cost.get("pruned", sum(t.get("state") == "pruned" for t in trials)),
            "tuning_time_s": spent[0] + (spent[1] or 0.0)}


def _as_contender(cell: dict, result: dict, study: dict, partial: bool) -> tuple[dict, dict]:
    """A trial's records read as its contender's: the contender's label and axes (not the trial's, whose
    tuned keys vary), one group for the contender's seeds, the search's cost under "tune", and test metrics
    from the study when result.json lacks them; a partial contender has none (no test was run for it)."""
    label = study.get("label") or cell["label"]
    cell = {**cell, "label": label, "axes": study.get("axes") or {}, "group": f"tuned:{label}"}
    metrics = dict(result.get("metrics") or {})
    if partial:
        metrics.pop("test", None)
    elif "test" not in metrics and study.get("test"):
        metrics["test"] = study["test"]
    return cell, {**result, "metrics": metrics, "tune": _tuning_cost(study)}


def tuning_notes(targets: Path | Sequence[Path]) -> list[str]:
    """What a tuned leaderboard means, and which contenders are still being tuned."""
    targets = [Path(targets)] if isinstance(targets, str | Path) else [Path(t) for t in targets]
    notes = []
    for suite_dir in targets:
        studies = read_studies(suite_dir)
        if not studies:
            continue
        where = f" ({suite_dir.name})" if len(targets) > 1 else ""
        budgets = sorted({_budget(s) for s in studies.values()})
        keys = list(dict.fromkeys(k for s in studies.values() for k in (s.get("space") or {})))
        metric = next((s["metric"] for s in studies.values() if s.get("metric")), "val_error")
        n = str(budgets[0]) if len(budgets) == 1 else f"{budgets[0]}–{budgets[-1]}"
        notes.append(f"tuned{where}: {n} trials per contender over {', '.join(keys) or 'no keys'}, chosen on "
                     f"validation ({metric}); test evaluated once, for the chosen trial. Hyperparameter "
                     "columns are the chosen trial's values; trials, pruned and tuning s are the search's cost.")
        for s in (s for s in studies.values() if s.get("superseded_tests")):
            earlier = ", ".join(f"trial {t.get('trial')}" for t in s["superseded_tests"])
            notes.append(f"test seen {s['test_looks']} times{where}: "
                         f"{s.get('label', s.get('contender'))}: its choice changed after {earlier} had been tested "
                         "(the budget changed); those figures are withdrawn (superseded_tests in its tune record)")
        open_ = [s for s in studies.values() if not s.get("chosen")]
        if open_:
            said = ", ".join(f"{s.get('label', s.get('contender'))} ({len(_complete(s))} of {_budget(s)} trials "
                             "complete)" for s in open_)
            notes.append(f"partial{where}: tuning of {len(open_)} of {len(studies)} contenders has not finished: "
                         f"{said}; a partial row shows its best trial so far, on validation only (no test).")
    return notes


def _budget(study: dict) -> int:
    budget = study.get("budget")
    if isinstance(budget, dict):
        budget = budget.get("trials")
    return int(budget) if isinstance(budget, int | float) else len(study["trials"])


def progress_notes(targets: Path | Sequence[Path]) -> list[str]:
    """A note for each suite folder whose last `bench run` has not finished every cell it set out to run
    (its run.json), as `bench status` sees them (a failed cell has finished, and is listed as failed): the
    report then shows a run in progress, or an interrupted one, and says so."""
    from bench.status import UNFINISHED, cell_states

    notes = []
    for suite_dir in [Path(targets)] if isinstance(targets, str | Path) else [Path(t) for t in targets]:
        try:
            planned = read_json(suite_dir / RUN)["cells"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        states = [r["state"] for r in cell_states(suite_dir, [(c, "") for c in planned])]
        done, running = sum(s not in UNFINISHED for s in states), states.count("running")
        if done < len(planned):
            notes.append(f"partial: {done} of the {len(planned)} cells of the last run have finished"
                         + (f", {running} running" if running else "") + f" ({suite_dir.name}; see `bench status`)")
    return notes


def _derived(name: str, cell_dir: Path, result: dict, target_error: float | None) -> dict[str, Any]:
    """The column `name` computed from the record (and, for time to target, with REACHED beside it: 1.0 if
    the cell reached the target error, 0.0 if its history shows it never did, None without one)."""
    from bench.cost import achieved_gflops_per_s, time_to_accuracy  # bench.cost loads torch

    if name == "gflops_per_s":
        return {name: achieved_gflops_per_s(_get(result, ("cost", "gflops_forward")),
                                            _get(result, ("cost", "train_images_per_s")))}
    if name == "time_to_target_s":
        history = read_history(cell_dir) if result.get("status") == "ok" else []
        seconds = time_to_accuracy(history, target_error) if history else None
        return {name: seconds, REACHED: 1.0 if seconds is not None else (0.0 if history else None)}
    raise AssertionError(f"no rule derives column '{name}'")


def _fill_missing_metrics(df: pd.DataFrame, columns: Sequence[str], recompute: bool) -> None:
    metric_cols = [c for c in columns if COLUMNS[c].path[:1] == ("metrics",)]
    if not metric_cols:
        return
    ok = (df["status"] == "ok").to_numpy()
    missing = df[metric_cols].isna().to_numpy() & ok[:, None]
    if "partial" in df.columns:  # a contender still being tuned has no test figures, whatever its files hold
        partial = df["partial"].fillna(False).astype(bool).to_numpy()
        missing &= ~(partial[:, None] & np.array([COLUMNS[c].path[1] == "test" for c in metric_cols])[None, :])
    for i in np.flatnonzero(missing.any(axis=1)):
        cache: dict[str, dict[str, float]] = {}
        for j in np.flatnonzero(missing[i]):
            _, split, key = COLUMNS[metric_cols[j]].path
            if split not in cache:
                from bench.metrics import full_metrics  # loads torch: only when a record lacks a metric

                try:
                    cache[split] = full_metrics(*read_predictions(df.at[i, "dir"], split))
                except UserError:
                    if recompute:
                        raise
                    cache[split] = {}  # no predictions for this split: the value stays missing
            df.at[i, metric_cols[j]] = cache[split].get(key)

