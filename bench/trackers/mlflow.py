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


@tracker("mlflow")
class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, target, log, results, suite):
        super().__init__(target, log, results, suite)
        from mlflow import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # a new store's schema steps, told at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        if isinstance(target, str):
            self.uri = target
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            self.uri = os.environ["MLFLOW_TRACKING_URI"]
        else:
            self.results.mkdir(parents=True, exist_ok=True)
            self.uri = f"sqlite:///{(self.results / MLFLOW_DB).resolve()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self._experiment: str | None = None
        self._parents: dict[str, str] = {}  # contender id -> its parent run

    @property
    def destination(self) -> str:
        return f"mlflow:{self.uri}"

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

    def _parent(self, cell: CellRun) -> str:
        """The contender's parent run: found by its tags (made once, by whichever run met a trial first)."""
        if cell.contender not in self._parents:
            runs = self.client.search_runs(
                [self.experiment()], max_results=1,
                filter_string=f"tags.`bench.kind` = 'contender' and tags.`bench.contender` = '{cell.contender}'")
            if runs:
                self._parents[cell.contender] = runs[0].info.run_id
            else:
                run = self.client.create_run(self.experiment(), run_name=cell.contender_label, tags={
                    "bench.kind": "contender", "bench.contender": cell.contender, "bench.suite": self.suite})
                self._parents[cell.contender] = run.info.run_id
        return self._parents[cell.contender]

    def start(self, cell: CellRun, run_id: str | None, logged: int) -> Run:
        from mlflow.entities import Param

        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return _Run(self.client, run_id, max(logged, self._last_step(run_id)))
        tags = {"bench.kind": "trial" if cell.contender else "cell", "bench.cell_id": cell.id,
                "bench.suite": cell.suite, "bench.seed": str(cell.seed), "bench.status": "running"}
        if cell.contender:
            tags.update({"mlflow.parentRunId": self._parent(cell), "bench.contender": cell.contender,
                         "bench.trial": str(cell.trial)})
        run = self.client.create_run(self.experiment(), run_name=cell.label, tags=tags)
        run_id = run.info.run_id
        params = [Param(_key(k), str(v)[:6000]) for k, v in sorted(cell.params.items())]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        return _Run(self.client, run_id, 0)

    def _last_step(self, run_id: str) -> int:
        """The last epoch the store holds (a kill may have come between a send and the count's save)."""
        keys = list(self.client.get_run(run_id).data.metrics)
        history = [k for k in keys if "." not in k and k not in ("best_epoch", "epochs_run")]  # not final figures
        if not history:
            return 0
        return max((m.step for m in self.client.get_metric_history(run_id, history[0])), default=0)

    def mark_chosen(self, cell: CellRun, run_id: str, chosen: bool) -> None:
        from mlflow.entities import Metric

        self.client.set_tag(run_id, "bench.chosen", str(chosen).lower())
        if not chosen:
            return
        result = read_result(cell.dir) or {}
        test = {f"test.{k}": float(v) for k, v in ((result.get("metrics") or {}).get("test") or {}).items()
                if isinstance(v, int | float)}
        now = int(time.time() * 1000)
        if test:  # the chosen trial alone is tested, after its run ended
            self.client.log_batch(run_id, metrics=[Metric(_key(k), v, now, 0) for k, v in test.items()])
        parent = self._parent(cell)
        val = {f"val.{k}": float(v) for k, v in ((result.get("metrics") or {}).get("val") or {}).items()
               if isinstance(v, int | float)}
        self.client.log_batch(parent, metrics=[Metric(_key(k), v, now, 0) for k, v in {**val, **test}.items()])
        self.client.set_tag(parent, "bench.chosen_trial", cell.id)
        self.client.set_tag(parent, "bench.chosen_run", run_id)
        self.client.set_terminated(parent, "FINISHED")


class _Run(Run):
    def __init__(self, client, run_id: str, logged: int):
        self.client, self.id, self.logged = client, run_id, logged

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, int(row["epoch"])) for row in rows if row["epoch"] > self.logged
                   for k, v in row.items() if k != "epoch"]
        for i in range(0, len(metrics), 10 * BATCH):
            self.client.log_batch(self.id, metrics=metrics[i:i + 10 * BATCH])
        self.logged = max([self.logged, *(int(r["epoch"]) for r in rows)])

    def finish(self, ending: Ending) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, 0) for k, v in sorted(ending.summary.items())]
        tags = [RunTag("bench.status", ending.status)]
        if ending.reason:
            tags.append(RunTag("bench.reason", ending.reason[:5000]))
        for i in range(0, len(metrics), 10 * BATCH):
            self.client.log_batch(self.id, metrics=metrics[i:i + 10 * BATCH])
        self.client.log_batch(self.id, tags=tags)
        for path in map(Path, ending.files):  # the cell's figures in plots/, its records at the top
            self.client.log_artifact(self.id, str(path), CELL_PLOTS if path.parent.name == CELL_PLOTS else None)
        self.client.set_terminated(self.id, "FINISHED" if ending.ok else "FAILED")

    def suspend(self) -> None:
        self.client.set_terminated(self.id, "KILLED")  # continued (RUNNING again) when the cell resumes
