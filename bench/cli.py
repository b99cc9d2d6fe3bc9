"""The `bench` command: parses arguments, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fair, reproducible benchmarks of image-classification architectures and techniques.")
err = Console(stderr=True)


def _say(text: str) -> None:
    err.print(text, highlight=False, markup=False, soft_wrap=True)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Executor(StrEnum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


class Format(StrEnum):
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"
    html = "html"
    table = "table"


OVERRIDES = typer.Argument(None, show_default=False, metavar="KEY=VALUE",
                           help="overrides of the suite file's keys, VALUE in TOML (a bare word is a string), "
                                "e.g. train.lr=0.1 'grid.\"train.lr\"=[0.1, 0.01]' model.arch=tv:vgg16")


def _plan(suite_path: Path, only: str | None, smoke: bool, overrides: list[str] | None = None, **kwargs):
    from bench.api import plan

    planned = plan(suite_path, only=only, smoke=smoke, overrides=overrides or (), **kwargs)
    for note in planned.notes:
        _say(f"[bench] {note}")
    return planned


@app.command()
def run(
    suite: Path = typer.Argument(..., help="suite file, e.g. suites/quickstart.toml"),
    overrides: list[str] | None = OVERRIDES,
    results: Path = typer.Option(Path("results"), help="where results/<suite>/ is written"),
    only: str | None = typer.Option(None, help="run only cells whose id or label matches this glob"),
    smoke: bool = typer.Option(False, help="tiny generated stand-in data, one short epoch, no downloads"),
    force: bool = typer.Option(False, help="rerun cells that already finished, from epoch 1"),
    device: Device = typer.Option(Device.auto, help="auto picks cuda, then mps, then cpu"),
    checkpoint: bool = typer.Option(True, help="save every epoch and resume an unfinished cell from its last"),
    keep_checkpoints: bool = typer.Option(False, help="keep checkpoint.pt in a cell's folder once it finished"),
    in_process: bool = typer.Option(False, help="run cells in this process, not one child process each "
                                                "(for a debugger; a crash then ends the suite)"),
    jobs: int | None = typer.Option(None, help="cells at once on this machine (default: one per GPU, else 1)"),
    executor: Executor = typer.Option(Executor.local, help="where cells run: this machine, Ray tasks, or a "
                                                           "Slurm job array (submitit)"),
    address: str | None = typer.Option(None, help="Ray: the cluster to join (default: RAY_ADDRESS, else a "
                                                  "local instance)"),
    threads: int | None = typer.Option(None, help="torch threads per cell on the CPU (default: the cores "
                                                  "divided among the cells running at once)"),
    partition: str | None = typer.Option(None, help="Slurm: partition (overrides the suite's resources table)"),
    account: str | None = typer.Option(None, help="Slurm: account (overrides the suite's resources table)"),
    time_min: int | None = typer.Option(None, help="Slurm: time limit per cell in minutes (overrides the suite's resources table)"),
    sbatch: list[str] = typer.Option([], help="Slurm: any other sbatch option as KEY=VALUE (repeatable)"),
) -> None:
    """Run every cell of a suite; finished cells are skipped, unfinished ones resumed, failed ones recorded."""
    from bench.api import run as run_plan
    from bench.cell import RunOptions
    from bench.config.overrides import resources
    from bench.executors import default_jobs, make_executor
    from bench.progress import make_progress

    planned = _plan(suite, only, smoke, overrides, device=device.value, results=results, force=force)
    spec = planned.suite
    if in_process and (executor != Executor.local or (jobs or 1) > 1):
        raise UserError("--in-process runs cells one after another in this process", key="--in-process",
                        hint="drop --jobs/--executor, or drop --in-process")
    runner = make_executor(executor.value, jobs=jobs or default_jobs(device.value), address=address,
                           resources=resources(spec.resources, partition=partition, account=account,
                                               time_min=time_min, sbatch=sbatch))
    options = RunOptions(force=force, checkpoint=checkpoint, keep_checkpoint=keep_checkpoints,
                         isolate=not in_process, threads=threads)
    try:
        summary = run_plan(planned, results=results, device=device.value, options=options, executor=runner,
                           progress=make_progress(err))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every finished epoch is in a checkpoint
        _say("[bench] interrupted; run the same command again to resume")
        raise typer.Exit(130) from None
    if spec.tune is not None:
        _tuned(summary)
        return
    busy = f", {len(summary.busy)} running elsewhere" if summary.busy else ""
    _say(f"[bench] {len(summary.ran)} ran, {len(summary.skipped)} skipped, {len(summary.failed)} failed{busy}"
         f" -> {summary.suite_dir}")
    if summary.failed:
        raise typer.Exit(1)


def _tuned(summary) -> None:
    """What `bench run` of a suite with [tune] says: a line per contender, then the totals."""
    from bench.tune.waves import describe

    for row in summary.contenders:
        _say(f"[bench] {describe(row)}")
    busy = f", {len(summary.busy)} held by another run" if summary.busy else ""
    _say(f"[bench] {len(summary.contenders)} contender(s) tuned: {len(summary.ran)} trial(s) ran, "
              f"{len(summary.skipped)} finished earlier, {len(summary.failed)} failed{busy} -> "
              f"{summary.suite_dir}/tune")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def status(
    target: Path = typer.Argument(..., help="a suite file (every cell, started or not) or a results/<suite> folder"),
    overrides: list[str] | None = OVERRIDES,
    results: Path = typer.Option(Path("results"), help="where results/<suite>/ is, for a suite file"),
    smoke: bool = typer.Option(False, help="the cells as --smoke runs them"),
) -> None:
    """Each cell: done, running (where, since when, epoch k of n), failed (why), resumable (at epoch k) or not
    started. Reads the results folder only: no data, weights or network."""
    from tabulate import tabulate

    from bench.api import status_rows
    from bench.status import summary

    rows = status_rows(target, overrides or (), results, smoke)
    print(tabulate([[r["id"], r["label"], r["state"], r["detail"]] for r in rows],
                   headers=["id", "label", "state", "detail"], tablefmt="github"))
    _say(f"[bench] {summary(rows)}")


@app.command()
def prepare(
    suite: Path = typer.Argument(..., help="suite file, e.g. suites/quickstart.toml"),
    overrides: list[str] | None = OVERRIDES,
    results: Path = typer.Option(Path("results"), help="where results/<suite>/ is written"),
    only: str | None = typer.Option(None, help="only cells whose id or label matches this glob"),
    smoke: bool = typer.Option(False, help="the cells as --smoke runs them"),
) -> None:
    """Build every split, decoded cache and set of initial weights the cells need, and estimate each one's
    training cost, before any cell takes a device (a parallel bench run does this first itself)."""
    from tabulate import tabulate

    from bench.api import prepare as prepare_cells
    from bench.prepare import flops_text

    planned = _plan(suite, only, smoke, overrides, results=results)
    done = prepare_cells(planned, results=results, say=_say)
    print(tabulate([[c.id, c.label, flops_text(done.costs[c.id]) if c.id in done.costs else "",
                     done.failed.get(c.id, "")] for c in planned.cells],
                   headers=["id", "label", "training (est.)", "not prepared"], tablefmt="github"))
    _say(f"[bench] {len(done.costs)} of {len(planned.cells)} cell(s) prepared in {done.seconds:.1f} s "
         f"-> {results / planned.suite.suite.name}")
    if done.failed:
        raise typer.Exit(1)


@app.command()
def plan(suite: Path = typer.Argument(..., help="suite file"),
         overrides: list[str] | None = OVERRIDES,
         only: str | None = typer.Option(None, help="only cells whose id or label matches"),
         smoke: bool = typer.Option(False, help="show the cells as --smoke would run them"),
         data: bool = typer.Option(True, help="read the data and print each curation step's effect "
                                               "(builds the decoded cache once)"),
         show_config: str | None = typer.Option(None, metavar="CELL", help="print the resolved config (TOML) of "
                                                "the cells whose id or label matches, and nothing else")) -> None:
    """Expand and validate a suite without training; print its cells and what curation does to its data."""
    from tabulate import tabulate

    planned = _plan(suite, only, smoke, overrides, check=not show_config)
    if show_config:
        from bench.api import show_config as configs

        print(configs(planned, show_config))
        return
    spec, cells = planned.suite, planned.cells
    rows = [[c.id, c.label, c.config.model.arch, c.config.data.image_size, c.config.train.epochs, c.seed]
            for c in cells]
    headers = ["id", "label", "arch", "px", "epochs", "seed"]
    if any(c.parent for c in cells):  # staged cells: which cell's best weights each starts from
        labels = {c.id: c.label for c in cells}
        for row, c in zip(rows, cells, strict=True):
            row.append(f"{c.parent} ({labels[c.parent]})" if c.parent in labels else c.parent or "")
        headers.append("starts from")
    print(f"{spec.suite.name}: {len(cells)} cell(s). {spec.suite.description}".rstrip())
    if spec.tune is not None:  # each cell is a contender, tuned with the same budget
        t = spec.tune
        print(f"tuned: {len(cells)} contender(s), {t.trials} trials each over {', '.join(t.space)} "
              f"({t.sampler} sampler, {t.pruner} pruner; chosen on {t.metric}, then tested once)")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if data:
        from bench.api import data_configs
        from bench.data.inspect import curation_summary

        for cfg in data_configs(cells):
            print("\n" + curation_summary(cfg))


@app.command()
def report(
    targets: list[Path] | None = typer.Argument(
        None, help="results/<suite> folders, suite files, or a results folder (its latest run); several at once"),
    fmt: Format = typer.Option(Format.markdown, "--format", help="markdown, csv, json, latex, html or table"),
    out: Path | None = typer.Option(None, help="write to this file instead of standard output"),
    results: Path = typer.Option(Path("results"), help="where to look for runs"),
    metrics: str | None = typer.Option(None, help="columns, comma-separated, e.g. val_error,test_f1_macro,gflops"),
    filter_: list[str] | None = typer.Option(None, "--filter",
                                             help="KEY=GLOB or KEY!=GLOB, e.g. 'model.arch=tv:*'; repeat to AND"),
    rows: str | None = typer.Option(None, help="pivot: keys whose values make the rows, e.g. model.arch"),
    cols: str | None = typer.Option(None, help="pivot: keys whose values make the columns, e.g. model.freeze"),
    value: str | None = typer.Option(None, help="pivot: the metric in each pivot cell (default val_error); "
                                                 "leaderboard: the score that ranks contenders across "
                                                 "[[datasets]] (default test_error)"),
    sort: str | None = typer.Option(None, help="sort by this column, in its own direction (default val_error)"),
    recompute: bool = typer.Option(False, help="recompute every metric from predictions.npz"),
    target_error: float | None = typer.Option(None, help="add a time-to-target column: train seconds until "
                                                          "validation error <= this"),
    plots: Path | None = typer.Option(None, help="also write PNG plots to this folder"),
    significance: bool = typer.Option(True, help="mark rows significantly worse than the best row (a paired "
                                                 "test on the test images; reads every row's predictions)"),
) -> None:
    """Leaderboard or pivot table of one or more runs (default: the most recent one under results/)."""
    from bench.api import suite_dirs_of
    from bench.report import render

    suite_dirs = suite_dirs_of(targets or [None], results)

    def split(text: str | None) -> list[str]:
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    text = render(suite_dirs, fmt.value, metrics=split(metrics) if metrics else None, filters=filter_ or [],
                  rows=split(rows), cols=split(cols), value=value, sort=sort, recompute=recompute,
                  target_error=target_error, marks=significance)
    if out:
        from bench.store import atomic_write_text

        atomic_write_text(out, text)
        _say(f"[bench] wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if plots:
        from bench.plots import write_plots

        written = write_plots(suite_dirs, plots, filters=filter_ or [], rank_by=value or "test_error")
        _say(f"[bench] wrote {len(written)} plot(s) to {plots}")


@app.command()
def compare(
    a: str = typer.Argument(..., help="a cell folder, or a cell id or label within --suite"),
    b: str = typer.Argument(..., help="the other cell, the same way"),
    suite: Path | None = typer.Option(None, help="the results/<suite> folder that A and B are ids or labels in"),
    split: str = typer.Option("test", help="which saved predictions to compare"),
    resamples: int = typer.Option(10_000, help="bootstrap resamples"),
    seed: int = typer.Option(0, help="bootstrap seed"),
) -> None:
    """Paired comparison of two cells on the same images: McNemar's test and a bootstrap CI."""
    from bench.compare import compare_cells
    from bench.store import find_cell

    result = compare_cells(find_cell(a, suite), find_cell(b, suite), split=split, resamples=resamples,
                           seed=seed)
    print(result.summary())


@app.command()
def export(
    cell: str = typer.Argument(..., help="a cell folder, or a cell id or label within --suite"),
    out: Path = typer.Option(..., help="the CSV to write"),
    suite: Path | None = typer.Option(None, help="the results/<suite> folder that CELL is an id or label in"),
    split: str = typer.Option("test", help="which saved predictions to export"),
    k: int = typer.Option(5, help="predicted classes per image, best first"),
) -> None:
    """A cell's predictions as a Kaggle submission CSV: id,predicted (top-k classes, space-separated)."""
    from bench.export import export_submission
    from bench.store import find_cell

    n = export_submission(find_cell(cell, suite), out, split=split, k=k)
    _say(f"[bench] wrote {n} predictions to {out}")


@app.command()
def predict(
    cell: str = typer.Argument(..., help="a finished cell's folder, or a cell id or label within --suite"),
    images: Path = typer.Option(..., help="an unlabelled test set: a folder of images, or an iNat-style JSON "
                                          "(images[].id, file_name), e.g. test2019.json"),
    out: Path = typer.Option(..., help="the submission CSV to write: id,predicted"),
    suite: Path | None = typer.Option(None, help="the results/<suite> folder that CELL is an id or label in"),
    root: Path | None = typer.Option(None, help="with a JSON: the folder its file names are relative to "
                                                "(default: the JSON's folder)"),
    k: int = typer.Option(5, help="predicted classes per image, best first"),
    device: Device = typer.Option(Device.auto, help="auto picks cuda, then mps, then cpu"),
) -> None:
    """Run a finished cell's best weights over unlabelled images and write a Kaggle submission CSV."""
    from bench.export import predict_unlabelled, unlabelled_images, write_submission
    from bench.store import find_cell

    record = find_cell(cell, suite)
    listed = unlabelled_images(images, root)
    logits = predict_unlabelled(record, [f for _, f in listed], device.value)
    write_submission([i for i, _ in listed], logits, record.result["data"]["class_names"], out, k)
    _say(f"[bench] wrote {len(listed)} predictions to {out}")


@app.command("log")
def log_results(
    suite_dir: Path = typer.Argument(..., help="a suite's results folder, e.g. results/quickstart"),
    to: list[str] = typer.Option(..., help="mlflow, tensorboard or wandb; NAME=TARGET for another "
                                 "destination: mlflow=URI, tensorboard=DIR, wandb=offline"),
    project: str | None = typer.Option(None, help="the W&B project (default: log.project of the suite, else its name)"),
    entity: str | None = typer.Option(None, help="the W&B team or user"),
) -> None:
    """Send a suite's results to trackers (say, of a suite run without a log table); nothing is sent twice."""
    from bench.api import send_results

    sync = send_results(suite_dir, to, project=project, entity=entity, say=_say)
    for line in sync.lines():
        _say(line)
    if sync.failed:
        raise typer.Exit(1)


@app.command()
def models(pattern: str = typer.Argument("*", help="glob over prefix:name, e.g. 'tv:res*' or '*mobilenet*'")) -> None:
    """Architectures from every registry: bench built-ins, torchvision, timm."""
    from bench.models import list_archs

    names = list_archs(pattern if ":" in pattern or pattern == "*" else f"*{pattern}")
    print("\n".join(names))
    _say(f"[bench] {len(names)} architecture(s)")


data_app = typer.Typer(no_args_is_help=True, help="Look at a data set before training on it.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    target: Path = typer.Argument(..., help="a suite file (its data, curated as the suite says) or an image folder"),
    plot: Path | None = typer.Option(None, help="write a class-histogram PNG here"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Images, modes, resolutions, bad files, curation and images per class (study 001's Table 1)."""
    import json

    from bench.api import data_configs
    from bench.config import DataConfig
    from bench.data.inspect import describe, plot_histogram, render

    configs = (data_configs(_plan(target, None, smoke=False, check=False).cells) if target.suffix == ".toml"
               else [DataConfig(source="folder", root=str(target))])
    for i, cfg in enumerate(configs):
        info = describe(cfg)
        if as_json:
            sys.stdout.write(json.dumps(info, indent=1) + "\n")
        else:
            print(render(info) + "\n")
        if plot:
            out = plot if len(configs) == 1 else plot.with_stem(f"{plot.stem}-{i}")
            _say(f"[bench] wrote {plot_histogram(info, out)}")


def main() -> None:
    import errno

    from bench.environment import quiet_known_notices

    quiet_known_notices()
    try:
        app()
    except UserError as e:
        _say(f"error: {e.line()}")
        sys.exit(2)
    except OSError as e:  # a full disk is the user's to fix, and every write is atomic: nothing half-written
        if e.errno != errno.ENOSPC:
            raise
        from bench.artefacts import no_space

        folder = Path(e.filename).parent if e.filename else Path.cwd()
        _say(f"error: {no_space(folder, None, '').line()}")
        sys.exit(1)
