"""The `bench` command: parses arguments, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fair, reproducible benchmarks of image-classification architectures and techniques.")
err = Console(stderr=True)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Format(str, Enum):
    markdown = "markdown"
    csv = "csv"
    json = "json"
    table = "table"


def _cells(suite_path: Path, only: str | None, smoke: bool):
    from bench.config import load_suite
    from bench.runner import select
    from bench.suite import expand, preflight

    suite = load_suite(suite_path)
    cells = expand(suite)
    chosen = select(cells, only)
    if not chosen:
        raise UserError(f"--only '{only}' matches none of the {len(cells)} cells", file=suite_path,
                        hint="match a cell id or label; `bench plan` lists them")
    if smoke:
        from bench.smoke import smoke_cells

        chosen = smoke_cells(chosen)
    else:
        preflight(suite, chosen)
    return suite, chosen


@app.command()
def run(
    suite: Path = typer.Argument(..., help="suite file, e.g. suites/quickstart.toml"),
    results: Path = typer.Option(Path("results"), help="where results/<suite>/ is written"),
    only: str | None = typer.Option(None, help="run only cells whose id or label matches this glob"),
    smoke: bool = typer.Option(False, help="tiny generated stand-in data, one short epoch, no downloads"),
    force: bool = typer.Option(False, help="rerun cells that already finished"),
    device: Device = typer.Option(Device.auto, help="auto picks cuda, then mps, then cpu"),
) -> None:
    """Run every cell of a suite; finished cells are skipped, failed ones recorded."""
    from bench.progress import make_progress
    from bench.runner import run_suite

    spec, cells = _cells(suite, only, smoke)
    name = spec.suite.name + ("-smoke" if smoke else "")
    summary = run_suite(suite.read_text(), name, cells, results, device=device.value, force=force,
                        progress=make_progress(err))
    err.print(f"[bench] {len(summary.ran)} ran, {len(summary.skipped)} skipped, {len(summary.failed)} failed "
              f"-> {summary.suite_dir}", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def plan(suite: Path = typer.Argument(..., help="suite file"),
         only: str | None = typer.Option(None, help="only cells whose id or label matches"),
         smoke: bool = typer.Option(False, help="show the cells as --smoke would run them")) -> None:
    """Expand and validate a suite without training; print its cells."""
    from tabulate import tabulate

    spec, cells = _cells(suite, only, smoke)
    rows = [[c.id, c.label, c.config.model.arch, c.config.data.image_size, c.config.train.epochs, c.seed]
            for c in cells]
    print(f"{spec.suite.name}: {len(cells)} cell(s). {spec.suite.description}".rstrip())
    print(tabulate(rows, headers=["id", "label", "arch", "px", "epochs", "seed"], tablefmt="github"))


@app.command()
def report(
    target: Path | None = typer.Argument(None, help="a results/<suite> folder, a suite file, or a results folder"),
    fmt: Format = typer.Option(Format.markdown, "--format", help="markdown, csv, json or table"),
    out: Path | None = typer.Option(None, help="write to this file instead of standard output"),
    results: Path = typer.Option(Path("results"), help="where to look for runs"),
) -> None:
    """Leaderboard of a run (default: the most recent one under results/)."""
    from bench.report import render
    from bench.store import is_suite_dir

    suite_dir = _suite_dir(target, results)
    if suite_dir is None or not is_suite_dir(suite_dir):
        where = target or results
        raise UserError(f"no run found at '{where}'", hint="run `bench run SUITE` first, or name a results/<suite> folder")
    text = render(suite_dir, fmt.value)
    if out:
        from bench.store import atomic_write_text

        atomic_write_text(out, text)
        err.print(f"[bench] wrote {out}", highlight=False)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _suite_dir(target: Path | None, results: Path) -> Path | None:
    from bench.store import is_suite_dir, latest_suite_dir

    if target is None:
        return latest_suite_dir(results)
    if target.is_file() and target.suffix == ".toml":
        from bench.config import load_suite

        return results / load_suite(target).suite.name
    if is_suite_dir(target):
        return target
    return latest_suite_dir(target) if target.is_dir() else None


@app.command()
def models(pattern: str = typer.Argument("*", help="glob over prefix:name, e.g. 'tv:res*' or '*mobilenet*'")) -> None:
    """Architectures from every registry: bench built-ins, torchvision, timm."""
    from bench.models import list_archs

    names = list_archs(pattern if ":" in pattern or pattern == "*" else f"*{pattern}")
    print("\n".join(names))
    err.print(f"[bench] {len(names)} architecture(s)", highlight=False)


def main() -> None:
    try:
        app()
    except UserError as e:
        err.print(f"error: {e.line()}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
