"""Plots: the figure objects hold the expected axes and series; write_plots writes the files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support import answers, make_cell

HISTORY = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.6],
           "train_error": [0.8, 0.5, 0.3], "val_error": [0.8, 0.6, 0.5], "train_seconds": [1.0, 1.0, 1.0]}


def _labels(ax):
    return [line.get_label() for line in ax.get_lines()]


@pytest.fixture
def figures(monkeypatch):
    """{"<folder>/<file>": Figure} of every figure write_plots saves (cell id or suite, then the file name)."""
    import bench.plots as plots

    saved, save = {}, plots._save

    def keep(fig, path, written):
        save(fig, path, written)
        saved["/".join(path.parts[-2:])] = fig

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _title(fig) -> str:
    return fig.get_suptitle()


def _text_boxes(fig, texts):
    """The drawn extent of each text, without an annotation's line to its point, at the figure's dpi."""
    from matplotlib.text import Text

    fig.draw_without_rendering()  # places the texts again at fig.dpi, whatever dpi a savefig drew at
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]


def test_learning_curves_show_train_and_val_loss_and_error():
    from bench.plots import learning_curves

    fig = learning_curves(pd.DataFrame(HISTORY), "cell")
    loss, err = fig.axes[:2]
    assert _labels(loss) == ["train", "val"] and _labels(err) == ["train", "val"]
    assert loss.get_ylabel() == "cross-entropy loss" and err.get_ylabel() == "top-1 error"
    assert list(err.get_lines()[1].get_ydata()) == HISTORY["val_error"]


def test_learning_curves_tick_whole_epochs(tmp_path):
    from bench.plots import learning_curves

    fig = learning_curves(pd.DataFrame(HISTORY))
    fig.savefig(tmp_path / "curves.png")  # lays the figure out, as write_plots does
    for ax in fig.axes[:2]:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_pareto_front():
    from bench.plots import pareto_front

    # (cost, error): point 2 is beaten by point 1 on both; point 4 ties point 3's cost with more error
    x, y = [1.0, 2.0, 3.0, 4.0, 4.0, np.nan], [0.5, 0.3, 0.4, 0.2, 0.25, 0.0]
    assert pareto_front(x, y) == [0, 1, 3]


def test_cost_plot_marks_the_pareto_front():
    from bench.plots import cost_plot

    board = pd.DataFrame({"label": ["a", "b", "c"], "params_total": [1e3, 1e5, 1e4], "val_error": [0.5, 0.1, 0.6]})
    fig = cost_plot(board, "params_total")
    ax = fig.axes[0]
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [1e3, 1e5] and list(front.get_ydata()) == [0.5, 0.1]
    assert ax.get_xlabel() == "parameters" and ax.get_ylabel() == "val err" and ax.get_xscale() == "log"
    assert len(ax.collections[0].get_offsets()) == 3


def test_cost_plot_labels_of_cells_sharing_a_point_are_each_shown_apart(tmp_path):
    """Three cells of one backbone share its GFLOPs and nearly their error: their labels must not overprint."""
    from bench.plots import cost_plot

    labels = ["vgg16 freeze=features", "vgg16 freeze=all_but_head", "vgg16 freeze=none", "mlp"]
    board = pd.DataFrame({"label": labels, "gflops": [15.5, 15.5, 15.5, 0.01], "val_error": [0.3, 0.3, 0.301, 0.6]})
    fig = cost_plot(board, "gflops")
    fig.savefig(tmp_path / "cost.png", dpi=120)
    ax = fig.axes[0]
    shown = [t for t in ax.texts if t.get_text() in labels]
    assert sorted(t.get_text() for t in shown) == sorted(labels)
    boxes = _text_boxes(fig, shown)
    overlapping = [(a.get_text(), b.get_text()) for i, (a, p) in enumerate(zip(shown, boxes, strict=True))
                   for b, q in zip(shown[i + 1:], boxes[i + 1:], strict=True) if p.overlaps(q)]
    assert not overlapping
    assert all(fig.bbox.contains(*box.p0) and fig.bbox.contains(*box.p1) for box in boxes)  # none pushed off the page
    moved = [t for t in shown if t.arrow_patch.get_visible()]
    assert len(moved) == 2  # a lifted label is joined to its point by a line


def test_pr_curves_averaged_and_sampled_classes():
    from bench.plots import pr_curves

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 8
    logits = torch.randn(40, 8, generator=gen) + 3 * torch.eye(8)[labels]
    fig = pr_curves(logits, labels, [f"class{i}" for i in range(8)], sample=3)
    avg, some = fig.axes[:2]
    assert _labels(avg) == ["micro average", "macro average"]
    assert len(some.get_lines()) == 3 and all(label.startswith("class") for label in _labels(some))
    assert avg.get_xlabel() == "recall" and avg.get_ylabel() == "precision"
    for line in avg.get_lines():
        assert np.all((line.get_ydata() >= 0) & (line.get_ydata() <= 1))


def test_macro_pr_curve_runs_forward_in_recall_from_zero_and_encloses_the_map():
    """Averaging precision and recall per threshold made the macro curve run backwards and start at
    (0, 0); on a common recall grid it starts at recall 0 with the top predictions' precision."""
    from bench.metrics import full_metrics
    from bench.plots import pr_curves

    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 12, (300,), generator=gen)
    logits = torch.randn(300, 12, generator=gen) + 1.5 * torch.eye(12)[labels]
    avg = pr_curves(logits, labels, [str(i) for i in range(12)]).axes[0]
    macro = next(line for line in avg.get_lines() if line.get_label() == "macro average")
    recall, precision = np.asarray(macro.get_xdata()), np.asarray(macro.get_ydata())
    assert np.all(np.diff(recall) >= 0) and recall[0] == 0 and recall[-1] == 1
    assert precision[0] > 0
    # the mean over classes of each class's curve: its area is the mean average precision
    assert np.trapezoid(precision, recall) == pytest.approx(full_metrics(logits, labels)["map"], abs=0.03)


def test_confusion_plot_is_row_normalised():
    from bench.metrics import confusion_matrix
    from bench.plots import confusion_plot

    logits = torch.tensor([[2.0, 1, 0], [0, 2, 1], [0, 2, 1], [2, 0, 1]])
    fig = confusion_plot(confusion_matrix(logits, torch.tensor([0, 1, 0, 0])), ["a", "b", "c"])
    image = fig.axes[0].get_images()[0].get_array()
    assert np.allclose(image, [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0]])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]


@pytest.mark.parametrize("classes", [3, 12])
def test_confusion_plot_title_is_whole_and_clear_of_the_colour_bar(classes, tmp_path):
    from matplotlib.text import Text

    from bench.plots import confusion_plot

    title = "deep+dropout+augment arch=bench:deep_cnn lr=0.0001 head_dropout=0.5 batch_size=256 (test)"
    counts = np.eye(classes, dtype=int) * 5 + 1
    fig = confusion_plot(counts, [f"species_{i}" for i in range(classes)], title)
    fig.savefig(tmp_path / "confusion.png")  # lays the figure out, as write_plots does
    renderer = fig.canvas.get_renderer()
    shown = [t for t in fig.findobj(Text) if " ".join(t.get_text().split()) == title]
    assert len(shown) == 1
    box, page = shown[0].get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    colorbar = fig.axes[1].get_tightbbox(renderer)
    assert not box.overlaps(colorbar) and not box.overlaps(fig.axes[0].get_tightbbox(renderer))


def test_class_histogram_sorted_largest_first():
    from bench.plots import class_histogram

    fig = class_histogram([5, 30, 12], ["x", "y", "z"])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [30, 12, 5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["y", "z", "x"]


def test_write_plots_of_a_suite_without_a_test_split_uses_validation(tmp_path, cli, figures):
    """split = [0.8, 0.2, 0.0] saves validation predictions alone: the plots show those, and say so."""
    from bench.store import write_npz

    logits, labels = answers([True, False, True, True], classes=3)
    cell = make_cell(tmp_path / "s", "cell0", history=HISTORY, metrics={"val": {"top1_error": 0.25}})
    write_npz(cell / "predictions.npz", val_logits=logits.astype(np.float32), val_labels=labels)
    code, _, err = cli("report", tmp_path / "s", "--plots", tmp_path / "plots")
    assert code == 0, err
    assert {"cell0/confusion.png", "cell0/pr_curves.png", "cell0/learning_curves.png"} <= set(figures)
    assert _title(figures["cell0/confusion.png"]).endswith("(val)")
    assert _title(figures["cell0/pr_curves.png"]).endswith("(val)")


def test_a_suite_without_a_test_split_ranks_its_data_sets_on_validation(tmp_path, cli):
    for d, errors in (("d1", (0.2, 0.3, 0.4)), ("d2", (0.25, 0.35, 0.3))):
        for arch, error in zip("abc", errors, strict=True):
            make_cell(tmp_path / "s", f"{arch}{d}", arch=arch, dataset=d, metrics={"val": {"top1_error": error}})
    code, _, err = cli("report", tmp_path / "s", "--plots", tmp_path / "plots")
    assert code == 0, err
    assert {"cd_diagram.png", "performance_profile.png"} <= {p.name for p in (tmp_path / "plots" / "s").glob("*")}


def test_per_cell_plot_titles_name_the_seed(tmp_path, cli, figures):
    """Two seeds of one configuration share its label; the title tells their figures apart."""
    logits, labels = answers([True, False, True, True], classes=3)
    for seed in (0, 1):
        make_cell(tmp_path / "s", f"cell{seed}", seed=seed, history=HISTORY, predictions=(logits, labels))
    code, _, err = cli("report", tmp_path / "s", "--plots", tmp_path / "plots")
    assert code == 0, err
    per_cell = {path: fig for path, fig in figures.items() if path.startswith("cell")}
    assert len(per_cell) == 6
    for path, fig in per_cell.items():
        seed = path.split("/")[0].removeprefix("cell")
        assert f"seed={seed}" in " ".join(_title(fig).split()), (path, _title(fig))


def test_write_plots_writes_every_figure(tmp_path, cli):
    gen = torch.Generator().manual_seed(0)
    labels = np.arange(30) % 3
    for i, arch in enumerate(["a", "b"]):
        logits = torch.randn(30, 3, generator=gen).numpy() + 2 * np.eye(3)[labels] * (i + 1)
        make_cell(tmp_path / "s", f"cell{i}", arch=arch, predictions=(logits, labels), history=HISTORY,
                  val_error=0.5 - 0.2 * i, cost={"gflops_forward": 0.1 * (i + 1)})
    code, _, err = cli("report", tmp_path / "s", "--plots", tmp_path / "plots")
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in (tmp_path / "plots").rglob("*.png"))
    assert written == ["s/cell0/confusion.png", "s/cell0/learning_curves.png", "s/cell0/pr_curves.png",
                       "s/cell1/confusion.png", "s/cell1/learning_curves.png", "s/cell1/pr_curves.png",
                       "s/class_histogram_k0.png", "s/cost_gflops.png", "s/cost_params_total.png",
                       "s/cost_train_time_s.png"]
    assert (tmp_path / "plots" / "s" / "cost_gflops.png").read_bytes()[:4] == b"\x89PNG"


def test_tuning_plot_one_series_per_contender_pruned_hollow():
    from bench.plots import tuning_plot

    studies = [{"label": "a", "chosen": "a1", "metric": "val_error", "trials": [
        {"cell": "a0", "params": {"train.lr": 0.1}, "state": "complete", "value": 0.4},
        {"cell": "a1", "params": {"train.lr": 0.001}, "state": "complete", "value": 0.2},
        {"cell": "a2", "params": {"train.lr": 0.0001}, "state": "pruned", "value": 0.7},
        {"cell": None, "params": {"train.lr": 0.01}, "state": "running", "value": None}]},
        {"label": "b", "chosen": None, "trials": [
            {"cell": "b0", "params": {"train.lr": 0.05}, "state": "complete", "value": 0.3}]}]
    ax = tuning_plot(studies, "train.lr").axes[0]
    series = {c.get_label(): c for c in ax.collections if not c.get_label().startswith("_")}
    assert set(series) == {"a", "a (pruned)", "b"}
    assert len(series["a"].get_offsets()) == 2 and len(series["a (pruned)"].get_offsets()) == 1  # running: no value
    assert series["a (pruned)"].get_facecolors().size == 0 and series["a"].get_facecolors()[0][3] > 0  # hollow
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "train.lr"


def test_tuning_plot_legend_of_many_contenders_leaves_the_points_clear(tmp_path):
    from bench.plots import tuning_plot

    studies = [{"label": f"arch=backbone{i} freeze=none", "chosen": f"c{i}-t0", "metric": "val_error", "trials": [
        {"cell": f"c{i}-t{n}", "params": {"train.lr": 10.0 ** -n}, "state": "complete" if n < 2 else "pruned",
         "value": 0.1 * n + 0.01 * i} for n in range(4)]} for i in range(8)]
    fig = tuning_plot(studies, "train.lr")
    fig.savefig(tmp_path / "tuning.png", dpi=120)
    (legend,) = fig.legends
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == [s["label"] for s in studies] + [
        "pruned (hollow)", "chosen (ringed)"]
    assert not box.overlaps(fig.axes[0].get_window_extent(renderer))  # the plotting area, where the points are
    assert fig.bbox.contains(*box.p0) and fig.bbox.contains(*box.p1)


def test_write_plots_draws_the_ranking_and_the_tuning_of_a_tuned_suite_over_data_sets(tmp_path, cli):
    import json

    from tests.support import answers, study_record, trial_record

    s = tmp_path / "t"
    for d, errs in (("d1", (0.2, 0.3, 0.35)), ("d2", (0.25, 0.5, 0.4))):
        for arch, err in zip("abc", errs, strict=True):
            c = f"{arch}{d}"
            trials = [trial_record(s, c, 0, 0.1, "complete", err + 0.1, arch=arch),
                      trial_record(s, c, 1, 0.01, "complete", err, arch=arch, test=err,
                             predictions=answers([True, False, True, True], classes=3)),
                      trial_record(s, c, 2, 0.0001, "pruned", 0.9, arch=arch)]
            study_record(s, c, f"arch={arch} dataset={d}", trials, f"{c}-t1", {"top1_error": err}, arch=arch)
            path = s / "tune" / f"{c}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "axes": {"model.arch": arch, "dataset": d}}))
    code, out, err = cli("report", s, "--plots", tmp_path / "plots")
    assert code == 0, err
    assert "ranking across 2 data sets" in out
    written = {p.name: p for p in (tmp_path / "plots" / "t").glob("*.png")}
    assert {"cd_diagram.png", "performance_profile.png", "tuning_train.lr.png"} <= set(written), sorted(written)
    assert all(written[n].read_bytes()[:4] == b"\x89PNG" and written[n].stat().st_size > 5000
               for n in ("cd_diagram.png", "performance_profile.png", "tuning_train.lr.png"))
    chosen = {p.parent.name for p in (tmp_path / "plots" / "t").glob("*/confusion.png")}
    assert chosen == {f"{a}{d}-t1" for a in "abc" for d in ("d1", "d2")}  # per-cell figures: chosen trials only
