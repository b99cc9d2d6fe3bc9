"""PNG figures of a run: learning curves, accuracy against cost with its Pareto front, precision-recall
curves, confusion matrices, the class histogram; over several data sets the critical-difference diagram and
the performance profile (drawn by bench.ranking); for a tuned suite, each trial's validation metric against
each tuned key.

Each plotting function returns a matplotlib Figure built without pyplot (no global figure state, no GUI
backend: the Agg canvas renders it), so tests can inspect axes and series before anything is saved.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from bench import ranking
from bench.compare import read_predictions
from bench.metrics import (
    RECALL_GRID,
    averaged_pr_curves,
    confusion_matrix,
    precision_at_recall,
)
from bench.report.cross_dataset import cross_dataset, on_validation
from bench.report.leaderboard import leaderboard
from bench.report.load import COLUMNS, Filter, frame, read_studies
from bench.store import HISTORY, PREDICTIONS, Record

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COST_AXES = {"train_time_s": "training time (s)", "params_total": "parameters", "gflops": "forward GFLOPs per image"}
MAX_LABELLED_CLASSES = 30  # beyond this, class names on a confusion matrix are unreadable
LABEL_OFFSET = (3, 3)  # points from a point on a cost plot to its label
SMALL_FONT = 7  # point labels and legends


def _figure(width: float = 6.4, height: float = 4.8) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def learning_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Loss (left) and top-1 error (right) per epoch, training and validation."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 4)
    loss, err = fig.subplots(1, 2)
    for ax, what, name in ((loss, "loss", "cross-entropy loss"), (err, "error", "top-1 error")):
        for split in ("train", "val"):
            ax.plot(history["epoch"], history[f"{split}_{what}"], marker="o", label=f"{split}")
        ax.set(xlabel="epoch", ylabel=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a few epochs would tick at 1.25, 1.5, ...
        ax.legend()
    fig.suptitle(title)
    return fig


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower x and lower y are better), by x."""
    points = sorted((xi, yi, i) for i, (xi, yi) in enumerate(zip(x, y, strict=True))
                    if np.isfinite(xi) and np.isfinite(yi))
    front, best = [], np.inf
    for _x, yi, i in points:
        if yi < best:
            front.append(i)
            best = yi
    return front


def cost_plot(board: pd.DataFrame, cost: str, metric: str = "val_error") -> Figure:
    """`metric` against `cost`, one point per cell (mean over seeds), the Pareto front as a line."""
    fig = _figure()
    ax = fig.subplots()
    x, y = board[cost].to_numpy(float), board[metric].to_numpy(float)
    ax.scatter(x, y, label="cells")
    front = pareto_front(x, y)
    ax.plot(x[front], y[front], color="C3", drawstyle="steps-post", marker="o", mfc="none", ms=10,
            label="Pareto front")
    if cost != "train_time_s" or np.nanmax(x) / max(np.nanmin(x), 1e-12) > 20:
        ax.set_xscale("log")
    ax.set(xlabel=COST_AXES.get(cost, COLUMNS[cost].header), ylabel=COLUMNS[metric].header)
    ax.legend()
    shown = np.isfinite(x) & np.isfinite(y)
    _label_apart(ax, list(zip(x[shown], y[shown], strict=True)), list(board["label"][shown]))
    return fig


def _label_apart(ax, points: Sequence[tuple[float, float]], labels: Sequence[str]) -> None:
    """A label beside each point; where labels would overprint (cells sharing a point: one backbone's
    cost), the upper ones are lifted clear and drawn with a line to their point."""
    from matplotlib.text import Text

    line = {"arrowstyle": "-", "color": "0.5", "lw": 0.5, "shrinkA": 0, "shrinkB": 2}
    notes = [ax.annotate(label, xy, xytext=LABEL_OFFSET, textcoords="offset points", fontsize=SMALL_FONT,
                         arrowprops=line) for xy, label in zip(points, labels, strict=True)]
    fig, lifts = ax.get_figure(), None
    for _ in range(5):  # the layout makes room for the lifted labels, which moves the points: until it settles
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        for note in notes:
            note.xyann = LABEL_OFFSET
            note.update_positions(renderer)
        boxes = [Text.get_window_extent(note, renderer) for note in notes]  # the text alone, not its line
        placed, new = [], np.zeros(len(notes))
        for i in sorted(range(len(notes)), key=lambda i: (boxes[i].y0, boxes[i].x0)):
            box = boxes[i]
            while hits := [b for b in placed if b.overlaps(box)]:
                box = box.translated(0, max(b.y1 for b in hits) - box.y0 + 1)
            placed.append(box)
            new[i] = (box.y0 - boxes[i].y0) * 72 / fig.dpi  # pixels to points
        for note, lift in zip(notes, new, strict=True):
            note.xyann = (LABEL_OFFSET[0], LABEL_OFFSET[1] + lift)
            note.arrow_patch.set_visible(bool(lift))
        if lifts is not None and np.allclose(new, lifts):
            break
        lifts = new


def pr_curves(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], sample: int = 6,
              seed: int = 0, title: str = "") -> Figure:
    """Left: micro- and macro-averaged precision-recall curves; right: a random sample of classes. Every
    curve is precision read on one grid of recall from 0 to 1 (bench.metrics.averaged_pr_curves): the
    macro average is the mean over classes at each recall, and its area is the mAP."""
    n = logits.shape[1]
    labels = labels.long()
    fig = _figure(10, 4)
    avg, some = fig.subplots(1, 2)
    for average, (recall, precision) in averaged_pr_curves(logits, labels).items():
        avg.plot(recall, precision, label=f"{average} average")
    present = torch.bincount(labels, minlength=n).nonzero().flatten()
    gen = torch.Generator().manual_seed(seed)
    chosen = present[torch.randperm(len(present), generator=gen)[:sample]].sort().values.tolist()
    probs, grid = logits.float().softmax(1), np.linspace(0.0, 1.0, RECALL_GRID)
    for c in chosen:
        some.plot(grid, precision_at_recall(probs[:, c], labels == c, grid),
                  label=str(class_names[c]) if c < len(class_names) else str(c))
    for ax, name in ((avg, "averaged over classes"), (some, f"{len(chosen)} sampled classes")):
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=name)
        ax.legend(fontsize=SMALL_FONT)
    fig.suptitle(title)
    return fig


def confusion_plot(counts: np.ndarray | torch.Tensor, class_names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix (`counts`: rows = true class, columns = predicted, as
    bench.metrics.confusion_matrix and predictions.npz's test_confusion), counts in cells when the matrix is
    small. The title spans the figure above the matrix and its colour bar, wrapped to the figure's width."""
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(counts)
    width = max(5, 0.4 * n + 2)
    fig = _figure(width, max(4, 0.4 * n + 1.5))
    ax = fig.subplots()
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.9)
    if title:  # characters per line: 72 pt per inch, ~0.65 em per character at 12 pt
        fig.suptitle(textwrap.fill(title, max(20, int(width * 72 / (0.65 * 12)))), fontsize=12)
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), [str(c) for c in class_names[:n]], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in class_names[:n]], fontsize=7)
        for i, j in zip(*np.nonzero(counts), strict=True):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    return fig


def class_histogram(counts: Sequence[int], class_names: Sequence[str]) -> Figure:
    """Training images per class, largest first (the long tail)."""
    order = np.argsort(counts)[::-1]
    fig = _figure(min(16, max(6, 0.25 * len(counts))), 4)  # 1,010 iNat classes must not make a 250-inch figure
    ax = fig.subplots()
    ax.bar(range(len(order)), np.asarray(counts)[order])
    if len(order) <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(len(order)), [str(class_names[i]) for i in order], rotation=90, fontsize=7)
    ax.set(xlabel="class", ylabel="training images", title="training images per class")
    return fig


def tuning_plot(studies: Sequence[dict], key: str) -> Figure:
    """Each trial's value (the validation metric it was judged on) against its value of `key`, one marker
    series per contender; pruned trials hollow (their value is where they were stopped), the chosen trial
    ringed in black. Trials without a value (failed, running) or without `key` are left out. Choices that
    are not numbers are categories; numbers spanning more than a factor of 20 (learning rates) a log axis.
    The legend (a colour per contender, then what hollow and ringed mean) stands right of the axes, which
    the figure widens for, so that no legend covers the points."""
    from matplotlib.lines import Line2D

    shown = [[t for t in s["trials"] if t.get("value") is not None and key in (t.get("params") or {})]
             for s in studies]
    names = [str(study.get("label", study.get("contender"))) for study in studies]
    # an entry is a marker and its text: ~0.6 em a character at SMALL_FONT points, 72 points an inch
    legend_width = (max(map(len, names), default=0) + 4) * 0.6 * SMALL_FONT / 72
    fig = _figure(6.4 + legend_width)
    ax = fig.subplots()
    values = [t["params"][key] for trials in shown for t in trials]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)

    def x(trials: list[dict]) -> list:
        return [t["params"][key] if numeric else str(t["params"][key]) for t in trials]

    handles = []
    for i, (study, trials, name) in enumerate(zip(studies, shown, names, strict=True)):
        color = f"C{i % 10}"
        for state, face, suffix in (("complete", color, ""), ("pruned", "none", " (pruned)")):
            these = [t for t in trials if t.get("state") == state]
            if these:
                ax.scatter(x(these), [t["value"] for t in these], marker="o", facecolors=face, edgecolors=color,
                           s=36, label=name + suffix)
        chosen = [t for t in trials if t.get("cell") is not None and t.get("cell") == study.get("chosen")]
        if chosen:
            ax.scatter(x(chosen), [t["value"] for t in chosen], marker="o", facecolors="none", edgecolors="black",
                       s=140, linewidths=1.5)
        if trials:
            handles.append(Line2D([], [], ls="", marker="o", color=color, label=name))
    if numeric and values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_xscale("log")
    metric = next((s["metric"] for s in studies if s.get("metric")), "val_error")
    ax.set(xlabel=key, ylabel=COLUMNS[metric].header if metric in COLUMNS else metric,
           title=f"{metric} of each trial against {key}")
    if handles:
        handles += [Line2D([], [], ls="", marker="o", mfc="none", mec="0.4", label="pruned (hollow)"),
                    Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=11, mew=1.5, label="chosen (ringed)")]
        per_column = max(1, int(fig.get_figheight() * 72 / (2 * SMALL_FONT)))  # an entry is ~2 font sizes tall
        fig.legend(handles=handles, loc="outside right upper", fontsize=SMALL_FONT,
                   ncols=-(-len(handles) // per_column))
    return fig


def _save(fig: Figure, path: Path, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    written.append(path)


def write_plots(suite_dirs: Sequence[Path], out_dir: Path, filters: Sequence[str] = (), split: str | None = None,
                metric: str = "val_error", rank_by: str = "test_error") -> list[Path]:
    """Every figure for the finished cells of `suite_dirs` that pass `filters`; returns the files written.

    out_dir/<suite>/cost_<cost>.png, class_histogram_<split key>.png, and per cell (titled with its label
    and seed) out_dir/<suite>/<cell id>/learning_curves.png, pr_curves.png, confusion.png of `split`
    (default: test, or validation for a cell without a test split); over two or more
    [[datasets]], cd_diagram.png and performance_profile.png (contenders ranked by `rank_by`, or by its
    validation figure in a suite without a test split); for a tuned
    suite, tuning_<key>.png per tuned key."""
    out_dir = Path(out_dir)
    columns = list(dict.fromkeys([metric, *COST_AXES, rank_by, on_validation(rank_by)]))
    df = frame(list(suite_dirs), columns, filters=[Filter.parse(f) for f in filters], records=True)
    written: list[Path] = []
    for suite_dir in suite_dirs:  # every trial of a study, not only the chosen ones the frame keeps
        studies = list(read_studies(suite_dir).values())
        for key in dict.fromkeys(k for s in studies for k in (s.get("space") or {})):
            _save(tuning_plot(studies, key), out_dir / Path(suite_dir).name / f"tuning_{key}.png", written)
    if not len(df):
        return written
    for suite, part in df.groupby("suite", sort=False):
        board = leaderboard(part, columns, metric)
        for cost in COST_AXES:
            if not board.empty and board[cost].notna().any():
                _save(cost_plot(board, cost, metric), out_dir / suite / f"cost_{cost}.png", written)
        for r in cross_dataset(board, rank_by):
            if r.test is not None:
                what = f"{COLUMNS[r.metric].header} over {r.test.datasets} data sets"
                written.append(ranking.draw_cd_diagram(r.test, out_dir / suite / "cd_diagram.png"))
                profile = ranking.performance_profile(r.complete, higher_is_better=r.higher)
                written.append(ranking.draw_performance_profile(profile, out_dir / suite / "performance_profile.png",
                                                                f"Performance profile: {what}"))
        histograms = set()
        for row in part[part["status"] == "ok"].itertuples():
            written += cell_plots(row.record, out_dir / suite / row.id, split, f"{row.label} seed={row.seed}")
            data = row.record.result.get("data", {})
            names = data.get("class_names") or []
            key = data.get("split_key")
            if data.get("train_class_counts") and key not in histograms:
                histograms.add(key)
                _save(class_histogram(data["train_class_counts"], names),
                      out_dir / suite / f"class_histogram_{key}.png", written)
    return written


def cell_plots(record: Record, dest: Path, split: str | None = None, title: str | None = None) -> list[Path]:
    """A finished cell's own figures in `dest`: its learning curves, and the PR curves and confusion matrix of
    `split` (default test where the cell was tested, else validation). For the report (whose row label a
    tuned contender's chosen trial shows under) and the trackers."""
    written: list[Path] = []
    cell_dir, data = record.dir, record.result.get("data", {})
    names = data.get("class_names") or []
    title = title or f"{record.cell['label']} seed={record.cell['config'].get('seed')}"
    if (cell_dir / HISTORY).is_file():
        _save(learning_curves(pd.read_csv(cell_dir / HISTORY), title), dest / "learning_curves.png", written)
    if (cell_dir / PREDICTIONS).is_file():
        # a suite whose split has no test part (split = [0.8, 0.2, 0.0]) saves validation's predictions alone
        shown = split or ("test" if "test" in record.result.get("metrics", {}) else "val")
        logits, labels = read_predictions(cell_dir, shown)
        _save(pr_curves(logits, labels, names, title=f"{title} ({shown})"), dest / "pr_curves.png", written)
        _save(confusion_plot(confusion_matrix(logits, labels), names, f"{title} ({shown})"),
              dest / "confusion.png", written)
    return written
