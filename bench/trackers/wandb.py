"""Weights & Biases (`[log] wandb = "online"|"offline"`): one W&B run per cell, its run files under
<results>/wandb/ in either mode. Offline ones are sent later with `wandb sync`: one offline-run-* folder per
cell run (a continued run's earlier folder gives way to one with every epoch).

The `wandb` package is imported only when a run is opened: `import wandb` here is absolute, so it finds the
installed package, never this module."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.config.suite import Log
from bench.store import WANDB_DIR
from bench.trackers.base import CellRun, Ending, Run, Tracker, tracker

# What `bench run` exits with when interrupted (128 + SIGINT): with mark_preempting, W&B shows the run as
# preempted, neither finished nor failed, and it is continued under the same id.
SUSPENDED_EXIT_CODE = 130


def _settings(mode: str) -> dict[str, Any]:
    """A fresh dict for each wandb.init: W&B writes the run's own values (its id among them) into the Settings
    it is given, so one Settings object shared by two runs makes the second reuse the first one's id."""
    return dict(
        mode=mode,
        reinit="create_new",  # runs of parallel cells are open at once; none becomes the global wandb.run
        silent=True,  # bench prints its own progress lines; W&B's banners would break into them
        console="off",  # this process's output is the whole suite's, not one cell's (cells run elsewhere)
        x_disable_stats=True,  # system metrics would sample this parent process, the same for every run
        x_save_requirements=False,  # a pip freeze per run (~0.1 s each); bench records its environment
        # the run keeps a copy (or hard link) of each file as it was when the cell ended, not a symlink that
        # follows a later rewrite of the cell's folder
        symlink=False,
    )


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """bench's dotted keys as nested dicts, as the config is: W&B shows both as `val.acc`, and its API then
    finds `summary_metrics.val.acc`. A key under a name that already holds a value keeps its dotted name."""
    out: dict[str, Any] = {}
    for key in sorted(flat):  # "a" sorts before "a.b": a plain key is placed before any key under it
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if leaf not in node:
                node[leaf] = flat[key]
                continue
        out[key] = flat[key]
    return out


class WandBRun(Run):
    """One cell's W&B run, logging to its own run object (never the global wandb.run, which parallel cells
    would share)."""

    def __init__(self, run: Any, next_epoch: int, cell_dir: Path, tracker: WandB):
        self._run, self._next, self._cell_dir, self._tracker = run, next_epoch, cell_dir, tracker
        self.id = run.id

    @property
    def logged(self) -> int:
        return self._next - 1

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        for row in rows:  # after `logged` (the sync sends only those): W&B drops a step lower than one it has
            epoch = int(row["epoch"])
            # commit: the row is complete; W&B would hold the step open until the next one, and a live chart
            # would lag an epoch behind
            self._run.log(row, step=epoch, commit=True)
            self._next = epoch + 1

    def finish(self, ending: Ending) -> None:
        summary = _nested(ending.summary)
        summary["status"] = ending.status
        if ending.reason:
            summary["reason"] = ending.reason
            self._run.notes = f"{self._run.notes}\n{ending.status}: {ending.reason}"
        self._run.summary.update(summary)
        for path in map(Path, ending.files):
            if not path.is_file():
                continue
            # kept as laid out in the cell's folder (plots/...), so two files of one name do not clash
            base = self._cell_dir if path.is_relative_to(self._cell_dir) else path.parent
            self._run.save(str(path), base_path=str(base), policy="now", glob=False)
        self._close(0 if ending.ok else 1)

    def suspend(self) -> None:
        # The least wrong end for a cell that goes on later: exit code 0 would show it finished, a plain
        # non-zero one failed. Marked preempting first, a non-zero exit shows it preempted, which is what W&B
        # expects of a run resumed later under the same id (as its preemptible sweeps do).
        self._run.mark_preempting()
        self._close(SUSPENDED_EXIT_CODE)

    def _close(self, exit_code: int) -> None:
        self._tracker.runs.pop(self.id, None)
        self._run.finish(exit_code=exit_code)


@tracker("wandb")
class WandB(Tracker):
    """`target` is the W&B mode, "online" or "offline"; the project is [log] project or the suite's name, the
    entity [log] entity or W&B's default. Each start of a run makes one folder, <results>/wandb/offline-run-*
    (or run-* online), named by time and run id."""

    def __init__(self, target: bool | str, log: Log, results: Path, suite: str):
        super().__init__(target, log, results, suite)
        self.project = log.project or suite
        self.entity = log.entity
        self.runs: dict[str, WandBRun] = {}  # open runs: close() must not leave W&B to finish them as successes
        self._logged_in = False

    @property
    def destination(self) -> str:
        return f"wandb:{self.entity or ''}/{self.project}"

    def start(self, cell: CellRun, run_id: str | None, logged: int) -> Run:
        import wandb

        # W&B prints warnings (a file linked into a run, ...) by its process-wide settings, read when it is first
        # set up: a run's own silent setting does not reach them. This starts W&B's service (about 0.5 s).
        wandb.setup(wandb.Settings(silent=True))
        if self.target == "online" and not self._logged_in:
            # wandb.init would otherwise ask for an API key on the terminal, holding up the thread that
            # follows every cell; checking for a key sends nothing (verify=False)
            if not wandb.login(prompt=False, verify=False):
                raise RuntimeError('W&B has no API key: run `wandb login` or set WANDB_API_KEY, or log with '
                                   'wandb = "offline" and `wandb sync` later')
            self._logged_in = True
        trial = cell.contender is not None
        notes = f"bench cell {cell.id} of suite {cell.suite}, seed {cell.seed}"
        if trial:
            notes += f"; trial {cell.trial} of {cell.contender_label or cell.contender}"
        self.results.mkdir(parents=True, exist_ok=True)  # W&B falls back to a temporary folder when it is missing
        offline_again = self.target == "offline" and run_id is not None
        if offline_again:
            # An offline run continued: a killed process loses what W&B's service had not yet written to the
            # run's file, so what the cell's folder counts as sent may not be there. The earlier folders of
            # this run give way to one that gets every epoch again (history.csv has them all): one folder per
            # run, complete, for `wandb sync`.
            wandb_dir = self.results / WANDB_DIR
            for folder in [*wandb_dir.glob(f"offline-run-*-{run_id}"), *wandb_dir.glob(f"offline-run-*-{run_id}-*")]:
                shutil.rmtree(folder, ignore_errors=True)
        run = wandb.init(
            entity=self.entity, project=self.project, dir=self.results,  # W&B adds the wandb/ folder itself
            id=run_id, resume="allow" if run_id else None,
            name=cell.label, notes=notes, tags=[cell.suite[:64], cell.id] + (["trial"] if trial else []),  # W&B: 64 at most
            group=(cell.contender_label or cell.contender) if trial else cell.suite,
            job_type="trial" if trial else "cell",
            config={**cell.config, "seed": cell.seed},
            settings=wandb.Settings(**_settings(str(self.target))),
        )
        # A continued run goes on after the epochs already sent; online, W&B also knows the next step it takes
        # (offline it cannot, and says 0)
        first = 1 if offline_again else max(logged + 1, run.step if run_id else 0)
        started = WandBRun(run, first, Path(cell.dir), self)
        self.runs[run.id] = started
        return started

    def close(self) -> None:
        import wandb
        from wandb.sdk import wandb_setup

        errors = []
        for run in list(self.runs.values()):
            try:
                run.suspend()
            except Exception as e:  # the others are suspended all the same, the first error raised at the end
                errors.append(e)
        # W&B's service process serves the whole process: stopped by the last tracker (or other user) to end
        # its runs, since teardown would end any run still open as a success
        if wandb_setup.singleton().most_recent_active_run is None:
            try:
                wandb.teardown()
            except SystemExit as e:  # teardown exits with the service's non-zero code: an error to warn about
                raise RuntimeError(f"W&B's service ended with code {e.code}") from None
        if errors:
            raise errors[0]
