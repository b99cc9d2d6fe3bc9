"""MLflow: one experiment per suite, one run per cell (params = the resolved config as dotted keys, every
history column a metric per epoch, the final figures, the record as artefacts); a tuned contender is a parent
run with its trials nested under it, the chosen one tagged. Through MlflowClient, never the fluent API, whose
active run is process-global state."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from bench.store import CELL_PLOTS, MLFLOW_ARTIFACTS, MLFLOW_DB, read_result
from bench.trackers.base import CellRun, Ending, Run, Tracker, tracker

BATCH = 100  # MLflow's log_batch takes at most 100 params and 1000 metrics per call
_KEY = re.compile(r"[^\w.\- /]")  # what MLflow allows in a key; anything else becomes _


def _key(name: str) -> str:
    return _KEY.sub("_", name)


def _log(client, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """`values` as metrics of the run at `step`, in batches of what log_batch takes."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(_key(k), v, now, step) for k, v in sorted(values.items())]
    for i in range(0, len(metrics), 10 * BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + 10 * BATCH])


@tracker("mlflow")
class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, target, log, results, suite):
        super().__init__(target, log, results, suite)
        for name in ("mlflow.store.db.utils", "alembic"):  # a new store's schema steps, told at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        # a tracking server that is down would otherwise hold the end of a run for minutes (7 retries with
        # backoff, 120 s timeouts): it fails in seconds, one warning, and `bench log` sends it later
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
            os.environ.setdefault(var, value)
        if isinstance(target, str):
            self.uri = target
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            self.uri = os.environ["MLFLOW_TRACKING_URI"]
        else:
            self.results.mkdir(parents=True, exist_ok=True)
            self.uri = f"sqlite:///{(self.results / MLFLOW_DB).resolve()}"
        self._client = None
        self._experiment: str | None = None
        self._parents: dict[str, str] = {}  # contender id -> its parent run

    @property
    def destination(self) -> str:
        return f"mlflow:{self.uri}"

    @property
    def client(self):
        """Opened at first use, so that a store that cannot be opened fails as any other call does."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment(self) -> str:
        if self._experiment is None:
            found = self.client.get_experiment_by_name(self.suite)
            if found is not None:
                self._experiment = found.experiment_id
            else:  # a SQLite store keeps its artefacts beside it, not in ./mlruns of whatever folder bench ran in
                db = self.uri.removeprefix("sqlite:///") if self.uri.startswith("sqlite:///") else None
                where = (Path(db).parent / MLFLOW_ARTIFACTS / self.suite).resolve().as_uri() if db else None
                self._experiment = self.client.create_experiment(self.suite, artifact_location=where,
                                                                 tags={"bench.suite": self.suite})
        return self._experiment

    def _parent(self, contender: str, label: str | None = None) -> str | None:
        """The contender's parent run, found by its tags (made once, by whichever run met a trial first);
        None when it has none and no `label` to make it with."""
        if contender not in self._parents:
            runs = self.client.search_runs(
                [self.experiment()], max_results=1,
                filter_string=f"tags.`bench.kind` = 'contender' and tags.`bench.contender` = '{contender}'")
            if runs:
                self._parents[contender] = runs[0].info.run_id
            elif label is None:
                return None
            else:
                run = self.client.create_run(self.experiment(), run_name=label, tags={
                    "bench.kind": "contender", "bench.contender": contender, "bench.suite": self.suite})
                self._parents[contender] = run.info.run_id
        return self._parents[contender]

    def start(self, cell: CellRun, run_id: str | None, logged: int) -> Run:
        from mlflow.entities import Param

        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return _Run(self.client, run_id, max(logged, self._last_step(run_id)))
        tags = {"bench.kind": "trial" if cell.contender else "cell", "bench.cell_id": cell.id,
                "bench.suite": cell.suite, "bench.seed": str(cell.seed), "bench.status": "running"}
        if cell.contender:
            tags.update({"mlflow.parentRunId": self._parent(cell.contender, cell.contender_label),
                         "bench.contender": cell.contender,
                         "bench.trial": str(cell.trial)})
        run = self.client.create_run(self.experiment(), run_name=cell.label, tags=tags)
        run_id = run.info.run_id
        params = [Param(_key(k), str(v)[:6000]) for k, v in sorted(cell.params.items())]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        return _Run(self.client, run_id, 0)

    def _last_step(self, run_id: str) -> int:
        """The last epoch the store holds (a kill may have come between a send and the count's save)."""
        keys = [k for k in self.client.get_run(run_id).data.metrics
                if "." not in k and k not in ("best_epoch", "epochs_run")]  # history columns, not final figures
        return max((m.step for k in keys for m in self.client.get_metric_history(run_id, k)), default=0)

    def mark_chosen(self, cell: CellRun, run_id: str, chosen: bool) -> None:
        self.client.set_tag(run_id, "bench.chosen", str(chosen).lower())
        if not chosen:
            return
        # the chosen trial alone is tested, maybe after its run ended (then its figures are not in the run yet)
        held = self.client.get_run(run_id).data.metrics
        test = {k: v for k, v in _figures(cell, "test").items() if _key(k) not in held}
        if test:
            _log(self.client, run_id, test)

    def end_contender(self, contender: str, chosen: CellRun | None, run_id: str | None) -> None:
        parent = self._parent(contender)
        if parent is None:
            return
        run = self.client.get_run(parent)
        said = chosen.id if chosen else "none"
        if run.info.status in ("FINISHED", "FAILED") and run.data.tags.get("bench.chosen_trial") == said:
            return  # told before: figures are not logged twice
        if chosen is not None:
            _log(self.client, parent, {**_figures(chosen, "val"), **_figures(chosen, "test")})
            self.client.set_tag(parent, "bench.chosen_run", run_id)
        self.client.set_tag(parent, "bench.chosen_trial", said)
        self.client.set_terminated(parent, "FINISHED" if chosen else "FAILED")


def _figures(cell: CellRun, split: str) -> dict[str, float]:
    """A trial's final figures of `split` as its record has them now (test is added once it is chosen)."""
    metrics = ((read_result(cell.dir) or {}).get("metrics") or {}).get(split) or {}
    return {f"{split}.{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}


class _Run(Run):
    def __init__(self, client, run_id: str, logged: int):
        self.client, self.id, self.logged = client, run_id, logged

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        for row in rows:
            _log(self.client, self.id, {k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))
            self.logged = int(row["epoch"])

    def finish(self, ending: Ending) -> None:
        from mlflow.entities import RunTag

        _log(self.client, self.id, ending.summary)
        tags = [RunTag("bench.status", ending.status)]
        if ending.reason:
            tags.append(RunTag("bench.reason", ending.reason[:5000]))
        self.client.log_batch(self.id, tags=tags)
        for path in map(Path, ending.files):  # the cell's figures in plots/, its records at the top
            self.client.log_artifact(self.id, str(path), CELL_PLOTS if path.parent.name == CELL_PLOTS else None)
        self.client.set_terminated(self.id, "FINISHED" if ending.ok else "FAILED")

    def suspend(self) -> None:
        self.client.set_terminated(self.id, "KILLED")  # continued (RUNNING again) when the cell resumes
