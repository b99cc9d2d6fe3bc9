"""Leaderboards and pivot tables from result records, in six formats.

A report reads cell records (cell.json + result.json) from one or more suite folders, keeps those that
pass the filters, fills metrics missing from result.json from predictions.npz, averages over seeds
(mean ± std (n)), and lays the result out either as a leaderboard (one row per cell, sorted by a metric
in its own direction) or as a pivot (--rows/--cols keys, one --value). The best value of each column is
bold. Rows measured on another device or library version carry a mark (†) and a footnote, and time
columns are never ranked (sorted across, or bolded) across such rows.
"""

from __future__ import annotations

import fnmatch
import html
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cost import achieved_gflops_per_s, read_history, time_to_accuracy
from bench.errors import UserError, did_you_mean
from bench.metrics import HIGHER_IS_BETTER, full_metrics, load_predictions
from bench.registry import register
from bench.store import load_records


@dataclass(frozen=True)
class Column:
    header: str
    path: tuple[str, ...]  # where in result.json; () for a value derived from others
    digits: int
    metric: str  # key of HIGHER_IS_BETTER: the column's direction
    timing: bool = False  # depends on the device and library versions: never ranked across them


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
    "train_images_per_s": Column("train img/s", ("cost", "train_images_per_s"), 0, "train_images_per_s", True),
    "eval_images_per_s": Column("eval img/s", ("cost", "eval_images_per_s"), 0, "eval_images_per_s", True),
    "time_to_target_s": Column("s to target", (), 1, "time_to_target_s", timing=True),
    "gflops_per_s": Column("GFLOP/s", (), 1, "gflops_per_s", timing=True),
    "gflops": Column("GFLOPs", ("cost", "gflops_forward"), 3, "gflops_forward"),
    "peak_rss_mb": Column("peak RSS MB", ("cost", "peak_rss_mb"), 0, "peak_rss_mb"),
    "peak_cuda_mb": Column("peak CUDA MB", ("cost", "peak_cuda_mb"), 0, "peak_cuda_mb"),
    "params_total": Column("params", ("cost", "params_total"), 0, "params_total"),
    "params_trainable": Column("trainable", ("cost", "params_trainable"), 0, "params_trainable"),
})
DEFAULT_COLUMNS = ("val_error", "test_error", "test_top5_error", "train_time_s", "train_images_per_s",
                   "peak_rss_mb", "params_total", "params_trainable", "gflops")
SORT_BY = "val_error"
FIELDS = ("suite", "id", "group", "label", "seed", "status", "device")  # filter/pivot keys besides config
MARKS = ("†", "‡", "§", "¶", "#")


# ---------------------------------------------------------------- loading


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
    env = result.get("env") or {}
    libs = ", ".join(f"{k} {env[k]}" for k in ("torch", "torchvision", "timm") if env.get(k))
    return f"{env.get('device_name', '?')} ({libs})" if libs else str(env.get("device_name", "?"))


def _key_value(key: str, suite: str, cell: dict, result: dict) -> Any:
    if key == "suite":
        return suite
    if key == "device":
        return _get(result, ("env", "device_name"))
    if key == "status":
        return result.get("status")
    if key in ("id", "group", "label"):
        return cell[key]
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


def frame(targets: Path | Sequence[Path], columns: Sequence[str] = DEFAULT_COLUMNS, *, keys: Sequence[str] = (),
          filters: Sequence[Filter] = (), recompute: bool = False, target_error: float | None = None
          ) -> pd.DataFrame:
    """One row per cell record that passes `filters`: suite, id, group, label, seed, status, error, device,
    env, dir, axes (axis:<key>), `keys` (key:<key>) and each of `columns`.

    Metric columns missing from result.json (or all of them, with `recompute`) are computed from the
    cell's predictions.npz, so records written before a metric existed still report it."""
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
        suite = suite_dir.name
        for cell_dir, cell, result in load_records(suite_dir):
            if not checked:
                _check_keys([*keys, *(f.key for f in filters)], cell)
                checked = True
            if not all(f.keep(_key_value(f.key, suite, cell, result)) for f in filters):
                continue
            status = result.get("status")
            row = {"suite": suite, "id": cell["id"], "group": cell["group"], "label": cell["label"],
                   "seed": cell["config"]["seed"], "status": status, "error": result.get("error"),
                   "device": _get(result, ("env", "device_name")), "env": _env(result), "dir": cell_dir}
            row.update({f"axis:{k}": _text(v) if isinstance(v, list | dict | bool) or v is None else v
                        for k, v in cell["axes"].items()})
            row.update({f"key:{k}": _text(_key_value(k, suite, cell, result)) for k in keys})
            for name, path in plain:
                row[name] = None if recompute and status == "ok" and path[0] == "metrics" else _get(result, path)
            for name in derived:
                row[name] = _derived(name, cell_dir, result, target_error)
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        _fill_missing_metrics(df, columns, recompute)
    return df


def _derived(name: str, cell_dir: str, result: dict, target_error: float | None) -> Any:
    if name == "gflops_per_s":
        return achieved_gflops_per_s(_get(result, ("cost", "gflops_forward")),
                                     _get(result, ("cost", "train_images_per_s")))
    if name == "time_to_target_s":
        return time_to_accuracy(read_history(Path(cell_dir)), target_error) if result.get("status") == "ok" else None
    raise AssertionError(f"no rule derives column '{name}'")


def _fill_missing_metrics(df: pd.DataFrame, columns: Sequence[str], recompute: bool) -> None:
    metric_cols = [c for c in columns if COLUMNS[c].path[:1] == ("metrics",)]
    if not metric_cols:
        return
    ok = (df["status"] == "ok").to_numpy()
    missing = df[metric_cols].isna().to_numpy() & ok[:, None]
    for i in np.flatnonzero(missing.any(axis=1)):
        cache: dict[str, dict[str, float]] = {}
        for j in np.flatnonzero(missing[i]):
            _, split, key = COLUMNS[metric_cols[j]].path
            if split not in cache:
                try:
                    cache[split] = full_metrics(*load_predictions(Path(df.at[i, "dir"]), split))
                except UserError:
                    if recompute:
                        raise
                    cache[split] = {}  # no predictions for this split: the value stays missing
            df.at[i, metric_cols[j]] = cache[split].get(key)


# ---------------------------------------------------------------- aggregation


def leaderboard(df: pd.DataFrame, columns: Sequence[str] | None = None, sort: str | None = None,
                keys: Sequence[str] = ()) -> pd.DataFrame:
    """Finished cells grouped over seeds (per suite): mean, std and n per column, env; sorted by `sort`
    (default: val_error) in its own direction."""
    ok = df[df["status"] == "ok"] if len(df) else df
    if ok.empty:
        return pd.DataFrame()
    columns = [c for c in (columns or COLUMNS) if c in ok.columns]
    firsts = ["label", *[c for c in ok.columns if c.startswith("axis:")], *[f"key:{k}" for k in keys]]
    grouped = ok.groupby(["suite", "group"], sort=False)
    agg = grouped[firsts].first()
    agg["n"] = grouped["seed"].count()
    if ok["env"].nunique() == 1:  # the common case, without a Python call per group
        agg["env"] = ok["env"].iloc[0]
    else:
        agg["env"] = grouped["env"].agg(lambda s: " / ".join(sorted(set(s))))
    values = ok[columns].apply(pd.to_numeric, errors="coerce")
    values[["suite", "group"]] = ok[["suite", "group"]]
    g = values.groupby(["suite", "group"], sort=False)
    agg = agg.join(g.mean()).join(g.std().add_suffix("_std")).reset_index()
    sort = sort or (SORT_BY if SORT_BY in columns else (columns[0] if columns else None))
    if sort is None:
        return agg
    if sort not in agg.columns:
        raise UserError(f"cannot sort by '{sort}'", hint=did_you_mean(sort, columns))
    by, ascending = [sort], [not HIGHER_IS_BETTER.get(COLUMNS[sort].metric, False)]
    if COLUMNS[sort].timing and agg["env"].nunique() > 1:
        by, ascending = ["env", sort], [True, ascending[0]]  # times rank only within one environment
    return agg.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def _fmt(mean: Any, std: Any, n: int, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{mean:,.{digits}f}"
    if n > 1 and std is not None and not pd.isna(std) and round(std, digits) > 0:
        text += f" ± {std:,.{digits}f} ({n})"
    return text


def _best_mask(values: np.ndarray, column: Column, envs: Sequence[str]) -> np.ndarray:
    """Which entries are the best (ties at display precision included); none for a timing column whose
    entries come from more than one environment."""
    values = np.round(np.asarray(values, dtype=float), column.digits)
    finite = ~np.isnan(values)
    if finite.sum() < 2 or (column.timing and len({e for e, f in zip(envs, finite, strict=True) if f}) > 1):
        return np.zeros(len(values), dtype=bool)
    best = np.nanmax(values) if HIGHER_IS_BETTER.get(column.metric, False) else np.nanmin(values)
    return finite & (values == best)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Table:
    """What every format renders: display strings, which of them are best, footnotes, and the numbers."""
    title: str
    headers: list[str]
    rows: list[list[str]]
    bold: list[list[bool]]
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)  # what csv and json write
    lead: int = 1  # leading label columns (left-aligned); the rest are values


def _marks(envs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The most common environment is unmarked; each other one gets a mark and a footnote."""
    counts = pd.Series(list(envs)).value_counts(sort=True)
    if len(counts) < 2:
        return {}, []
    reference, others = counts.index[0], list(counts.index[1:])
    marks = {env: MARKS[i] if i < len(MARKS) else f"*{i + 1}" for i, env in enumerate(others)}
    notes = [f"{marks[e]} measured on {e}, not on {reference}; times are not ranked across environments"
             for e in others]
    return marks, notes


def leaderboard_table(df: pd.DataFrame, columns: Sequence[str], sort: str | None = None) -> Table:
    board = leaderboard(df, columns, sort)
    title = ", ".join(dict.fromkeys(df["suite"])) if len(df) else "no cells"
    if board.empty:
        return Table(title, ["cell"], [], [], _failure_notes(df), board)
    columns = [c for c in columns if c in board.columns]
    axes = [c for c in board.columns if c.startswith("axis:")]
    several = board["suite"].nunique() > 1
    headers = (["suite"] if several else []) + ([a.removeprefix("axis:").split(".")[-1] for a in axes] or ["cell"])
    lead = [[s] if several else [] for s in board["suite"]]
    if axes:
        lead = [p + ["—" if pd.isna(v) else str(v) for v in vals]
                for p, vals in zip(lead, board[axes].itertuples(index=False), strict=True)]
    else:
        lead = [p + [label] for p, label in zip(lead, board["label"], strict=True)]
    marks, notes = _marks(board["env"])
    for row, env in zip(lead, board["env"], strict=True):
        row[-1] += marks.get(env, "")
    envs, n = board["env"].tolist(), board["n"].astype(int).tolist()
    cells, bold = [], []
    for c in columns:
        col = COLUMNS[c]
        means, stds = board[c].tolist(), board[f"{c}_std"].tolist()
        cells.append([_fmt(m, s, k, col.digits) for m, s, k in zip(means, stds, n, strict=True)])
        bold.append(_best_mask(board[c].to_numpy(), col, envs))
    headers += [COLUMNS[c].header for c in columns]
    rows = [lead[i] + [col[i] for col in cells] for i in range(len(board))]
    flags = [[False] * len(lead[i]) + [bool(b[i]) for b in bold] for i in range(len(board))]
    sort = sort or (SORT_BY if SORT_BY in columns else columns[0])
    direction = "higher" if HIGHER_IS_BETTER.get(COLUMNS[sort].metric) else "lower"
    notes = [f"Sorted by {COLUMNS[sort].header} ({direction} is better); mean ± std (n) over seeds; errors "
             f"are fractions (0–1); the best value of each column is bold. Measured on: "
             f"{', '.join(sorted(set(df['env'].dropna())))}.", *notes, *_failure_notes(df)]
    data = board.drop(columns=["group"])
    data.columns = [c.removeprefix("axis:") for c in data.columns]
    return Table(title, headers, rows, flags, notes, data, len(lead[0]))


def _failure_notes(df: pd.DataFrame) -> list[str]:
    failed = df[df["status"] != "ok"] if len(df) else df
    return [f"failed: {r.id} {r.label}: {r.error}" for r in failed.itertuples()]


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def pivot_table(df: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], value: str) -> Table:
    """`value` (mean ± std over seeds) laid out with one row per combination of the `rows` keys' values
    and one column per combination of the `cols` keys' values (either may be empty: study 001's Table 2
    is --cols only, its Table 3 --rows only)."""
    keys = [*rows, *cols]
    board = leaderboard(df, [value], value, keys)
    col = COLUMNS[value]
    if board.empty:
        return Table(col.header, [col.header], [], [], _failure_notes(df))
    rk, ck = [f"key:{k}" for k in rows], [f"key:{k}" for k in cols]
    clash = board.groupby(rk + ck, sort=False)["group"].count() if keys else pd.Series([len(board)])
    if (clash > 1).any():
        where = ", ".join(f"{k}={v}" for k, v in zip(keys, np.atleast_1d(clash[clash > 1].index[0]), strict=False))
        raise UserError(f"{int(clash.max())} different cells fall in one pivot cell ({where or 'all'})",
                        hint="add a --rows/--cols key that tells them apart, or --filter to keep one")
    row_keys = list(dict.fromkeys(board[rk].itertuples(index=False, name=None))) if rows else [()]
    col_keys = sorted(dict.fromkeys(board[ck].itertuples(index=False, name=None)),
                      key=lambda t: tuple(_natural(x) for x in t)) if cols else [()]
    at = {(tuple(r[k] for k in rk), tuple(r[k] for k in ck)): r for r in board.to_dict("records")}
    marks, notes = _marks(board["env"])
    headers = [k.split(".")[-1] for k in rows] or [""]
    headers += [", ".join(c) if c else col.header for c in col_keys]
    grid_means = np.array([[at[(r, c)][value] if (r, c) in at else np.nan for c in col_keys] for r in row_keys],
                          dtype=float)
    grid_envs = [[at[(r, c)]["env"] if (r, c) in at else "" for c in col_keys] for r in row_keys]
    bold = np.zeros_like(grid_means, dtype=bool)
    if rows:  # best per column; with one row (--cols only), best along it
        for j in range(len(col_keys)):
            bold[:, j] = _best_mask(grid_means[:, j], col, [e[j] for e in grid_envs])
    else:
        bold[0] = _best_mask(grid_means[0], col, grid_envs[0])
    out_rows, flags = [], []
    for i, r in enumerate(row_keys):
        texts = []
        for c in col_keys:
            rec = at.get((r, c))
            texts.append("—" if rec is None else
                         _fmt(rec[value], rec[f"{value}_std"], int(rec["n"]), col.digits) + marks.get(rec["env"], ""))
        out_rows.append(list(r or (col.header,)) + texts)
        flags.append([False] * max(1, len(rows)) + bold[i].tolist())
    by = " × ".join(filter(None, [", ".join(rows), ", ".join(cols)]))
    direction = "higher" if HIGHER_IS_BETTER.get(col.metric) else "lower"
    notes = [f"{col.header} by {by}" + (f" (columns: {', '.join(cols)})" if cols else "")
             + f"; mean ± std (n) over seeds; {direction} is better, best in bold.", *notes, *_failure_notes(df)]
    data = pd.DataFrame(grid_means, columns=[", ".join(c) if c else value for c in col_keys])
    for k, name in enumerate(rows):
        data.insert(k, name, [r[k] for r in row_keys])
    return Table(f"{col.header} by {by}", headers, out_rows, flags, notes, data, max(1, len(rows)))


# ---------------------------------------------------------------- formats

FORMATS: dict[str, Callable[[Table], str]] = {}


def _styled(table: Table, style: Callable[[str], str], escape: Callable[[str], str] = str) -> list[list[str]]:
    return [[style(escape(v)) if b else escape(v) for v, b in zip(row, flags, strict=True)]
            for row, flags in zip(table.rows, table.bold, strict=True)]


@register(FORMATS, "markdown")
def _markdown(table: Table) -> str:
    """A GitHub pipe table, as tabulate's "github" format lays it out; written directly because tabulate
    spends most of a 10,000-row report guessing column types."""
    rows = _styled(table, lambda v: f"**{v}**")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(table.headers)]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |"
             for line in [table.headers, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = table.notes[:1] + [f"- {n}" for n in table.notes[1:]]
    return f"### {table.title}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


@register(FORMATS, "csv")
def _csv(table: Table) -> str:
    return table.data.to_csv(index=False)


@register(FORMATS, "json")
def _json(table: Table) -> str:
    return table.data.to_json(orient="records", indent=2) + "\n"


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
          "±": r"$\pm$", "—": "---", "–": "--", "×": r"$\times$", "†": r"\textsuperscript{\dag}",
          "‡": r"\textsuperscript{\ddag}", "§": r"\textsuperscript{\S}", "¶": r"\textsuperscript{\P}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


@register(FORMATS, "latex")
def _latex(table: Table) -> str:
    """A booktabs table (\\usepackage{booktabs}); footnotes under the rule, title as the caption."""
    spec = "l" * table.lead + "r" * (len(table.headers) - table.lead)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in _styled(table, lambda v: rf"\textbf{{{v}}}", latex_escape)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(n)}}}" for n in table.notes]
    return "\n".join([*lines, r"\end{table}"]) + "\n"


@register(FORMATS, "html")
def _html(table: Table) -> str:
    def cell(tag: str, v: str) -> str:
        return f"<{tag}>{v}</{tag}>"

    head = "<tr>" + "".join(cell("th", html.escape(h)) for h in table.headers) + "</tr>"
    body = ["<tr>" + "".join(cell("td", v) for v in row) + "</tr>"
            for row in _styled(table, lambda v: f"<b>{v}</b>", html.escape)]
    notes = "".join(f"<p>{html.escape(n)}</p>\n" for n in table.notes)
    return (f"<table>\n<caption>{html.escape(table.title)}</caption>\n<thead>{head}</thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n" + notes)


@register(FORMATS, "table")
def _terminal(table: Table) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    out = RichTable(title=table.title)
    for h in table.headers:
        out.add_column(escape(h))
    for row in _styled(table, lambda v: f"[bold]{v}[/bold]", escape):
        out.add_row(*row)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(out)
    for note in table.notes:
        console.print(note, markup=False, highlight=False)
    return console.export_text()


# ---------------------------------------------------------------- entry point


def render(targets: Path | Sequence[Path], fmt: str = "markdown", *, metrics: Sequence[str] | None = None,
           filters: Sequence[str] = (), rows: Sequence[str] = (), cols: Sequence[str] = (),
           value: str = SORT_BY, sort: str | None = None, recompute: bool = False,
           target_error: float | None = None) -> str:
    """The report as text: a leaderboard, or a pivot of `value` when `rows` or `cols` are given."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'", hint=did_you_mean(fmt, FORMATS))
    parsed = [Filter.parse(f) for f in filters]
    if rows or cols:
        if value not in COLUMNS:
            raise UserError(f"unknown metric '{value}'", hint=did_you_mean(value, COLUMNS))
        df = frame(targets, [value], keys=[*rows, *cols], filters=parsed, recompute=recompute,
                   target_error=target_error)
        _require_cells(df, filters)
        table = pivot_table(df, rows, cols, value)
    else:
        explicit = metrics is not None
        columns = list(metrics) if explicit else list(DEFAULT_COLUMNS)
        if target_error is not None and "time_to_target_s" not in columns:
            columns.append("time_to_target_s")
        needed = columns + ([sort] if sort and sort not in columns else [])
        df = frame(targets, needed, filters=parsed, recompute=recompute, target_error=target_error)
        _require_cells(df, filters)
        if not explicit and len(df):  # default columns that no record has are noise
            columns = [c for c in columns if c in ("val_error", "test_error") or df[c].notna().any()]
        table = leaderboard_table(df, columns, sort)
    return FORMATS[fmt](table)


def _require_cells(df: pd.DataFrame, filters: Sequence[str]) -> None:
    if not len(df):
        raise UserError("no cell record matches" + (f" --filter {' '.join(filters)}" if filters else ""),
                        hint="check the filters, or run the suite first")
