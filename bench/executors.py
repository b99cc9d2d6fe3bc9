"""Where cells run: one after another here, N at once on this machine's GPUs or cores, as Ray tasks, or as a
Slurm job array through submitit.

An executor decides only where each cell's process runs. Claims, checkpoints and records live in the results
folder and every worker goes through `bench.attempt.attempt`, so every executor writes the same files, never
runs one cell twice (two launches, or a launch and a local run, included), and — at the same torch threads
per cell — gives the same numbers. A staged cell (`model.init_from`) starts only once its parent finished.
Shared artefacts (split, caches, initial weights) are built under their own locks by the first cell that
needs them (bench.artefacts), so no executor builds one twice at once; a parallel run builds them all first
(`prepare`: here, or as one CPU-only Ray task or Slurm job), so that no cell holds a GPU while it waits on
another's lock, and starts the longest cells first (bench.prepare.longest_first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.attempt import attempt
from bench.cell import Cell, Outcome, RunOptions, depths
from bench.config import Resources
from bench.environment import EXECUTOR_ENV
from bench.errors import UserError, first_line
from bench.execute import failure_record
from bench.jobs import Job, make_job, prepare_job, ray_ranks, run_job, slurm_task, worker_env
from bench.prepare import Prepared, prepare_cells
from bench.progress import LogProgress
from bench.registry import register
from bench.store import JOB, SUBMITIT, read_result, write_json

EXECUTORS: dict[str, Callable[..., Any]] = {}


def default_jobs(device: str = "auto") -> int:
    """`--jobs` when not given: one cell per GPU, else one at a time."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _waves(cells: list[Cell]) -> list[list[Cell]]:
    """Cells by depth of their parent chain within the run: each wave only after the one before."""
    depth = depths(cells)
    return [[c for c in cells if depth[c.id] == d] for d in range(max(depth.values(), default=-1) + 1)]


class Executor:
    """What every executor shares: preparing a run's cells in this process, and nothing held between runs
    (used as a context manager by a run, which closes it at its end)."""
    name = ""
    parallel = False

    def prepare(self, cells: list[Cell], suite_dir: Path, progress: LogProgress,
                listings: str | None = None) -> Prepared:
        return prepare_cells(cells, suite_dir, progress.say, listings)

    def ranked(self, options: RunOptions, device: torch.device, cells_at_once: int = 1) -> RunOptions:
        """`options` with the ranks each cell trains as ([resources]), and on the CPU the threads of each:
        the cores divided among every rank of the cells running at once, unless set."""
        ranks = self.resources.ranks(device.type)
        if device.type == "cuda" and ranks > torch.cuda.device_count():
            raise UserError(f"[resources] gpus = {ranks}, but this machine has {torch.cuda.device_count()}",
                            key="[resources] gpus", hint="ask for fewer, or run on Ray or Slurm")
        cpus = max(1, int(self.resources.cpus or _cores() // cells_at_once) // ranks)  # a rank's share
        threads = options.threads
        if device.type == "cpu" and not threads and (ranks > 1 or cells_at_once > 1):
            threads = cpus
        return replace(options, ranks=ranks, threads=threads, cpus=cpus)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@register(EXECUTORS, "local")
class Local(Executor):
    """Up to `jobs` cells at once on this machine, each in its own process: on GPUs each cell sees one GPU
    (CUDA_VISIBLE_DEVICES set for its process, round robin); on the CPU the cores are divided among the jobs
    (torch threads per cell, recorded in its result). `jobs = 1` is the plain sequential run."""
    name = "local"

    def __init__(self, jobs: int = 1, resources: Resources | None = None, **_: Any):
        if jobs < 1:
            raise UserError(f"--jobs {jobs}: needs at least 1", hint="e.g. --jobs 2")
        self.jobs, self.resources = jobs, resources or Resources()

    @property
    def parallel(self) -> bool:
        return self.jobs > 1

    def run(self, cells: list[Cell], suite_dir: Path, device: torch.device, progress: LogProgress,
            options: RunOptions) -> Iterator[Outcome]:
        if not self.parallel:
            options = self.ranked(options, device)
            for i, cell in enumerate(cells, 1):
                yield attempt(cell, suite_dir, device, progress, i, len(cells), options, {EXECUTOR_ENV: self.name})
            return
        yield from self._pool(cells, suite_dir, device, options)

    def _slots(self, device: torch.device, ranks: int) -> list[dict[str, str]]:
        """What each cell running at once may use: on GPUs one (round robin, so `--jobs` above the GPU count
        shares them), or a cell of several ranks its own `ranks` GPUs."""
        if device.type != "cuda":
            return [{} for _ in range(self.jobs)]
        gpus = torch.cuda.device_count()
        # the GPUs this process sees, by the names its own CUDA_VISIBLE_DEVICES gives them
        names = [n.strip() for n in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if n.strip()][:gpus]
        names = names or [str(i) for i in range(gpus)]
        if ranks == 1:
            return [{"CUDA_VISIBLE_DEVICES": names[i % gpus]} for i in range(self.jobs)]
        return [{"CUDA_VISIBLE_DEVICES": ",".join(names[i * ranks + k] for k in range(ranks))}
                for i in range(min(self.jobs, gpus // ranks))]

    def _pool(self, cells: list[Cell], suite_dir: Path, device: torch.device, options: RunOptions
              ) -> Iterator[Outcome]:
        from bench.worker import STOP

        options = self.ranked(options, device, self.jobs)
        ids = {c.id for c in cells}
        pending = list(enumerate(cells, 1))
        finished: set[str] = set()
        slots = self._slots(device, options.ranks)
        running: dict[Any, tuple[Cell, dict[str, str]]] = {}
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="bench-job") as pool:
            try:
                while pending or running:
                    for item in list(pending):
                        index, cell = item
                        if not slots:
                            break
                        if cell.parent in ids and cell.parent not in finished:
                            continue  # its parent is queued or running: it waits for it
                        pending.remove(item)
                        slot = slots.pop(0)
                        job = make_job(cell, index, len(cells), suite_dir, device.type, options, self.name, slot)
                        running[pool.submit(run_job, job)] = (cell, slot)
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        cell, slot = running.pop(future)
                        slots.append(slot)
                        finished.add(cell.id)
                        yield future.result()
            except BaseException:  # Ctrl-C: every thread stops its cell's process, each checkpoint stays
                STOP.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                STOP.clear()


@register(EXECUTORS, "ray")
class Ray(Executor):
    """One Ray task per cell on a running cluster (`address`, or RAY_ADDRESS), or on a local instance started
    for the run. Each task asks for the cell's [resources]: 1 GPU where the cluster has GPUs, else an even
    share of the cluster's CPUs. A parent's task is an argument of its children's, so Ray starts them after
    it. The task claims the cell in the shared results folder and runs it in a child process, as locally."""
    name = "ray"
    parallel = True

    def __init__(self, jobs: int = 1, resources: Resources | None = None, address: str | None = None, **_: Any):
        self.jobs, self.resources, self.address = jobs, resources or Resources(), address
        self.started = False  # whether this run started Ray (its instance ends with the run, not with a wave)

    def _ray(self):
        """Ray, connected once per run: every wave of a tuned suite reuses the connection (and its instance)."""
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray, which is not installed",
                            hint="pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="warning", log_to_driver=False)
            self.started = True
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def prepare(self, cells: list[Cell], suite_dir: Path, progress: LogProgress,
                listings: str | None = None) -> Prepared:
        """One CPU-only task, before any cell's task takes a GPU."""
        ray = self._ray()
        cpus = min(self.resources.cpus or 1.0, ray.cluster_resources().get("CPU", 1.0))
        ref = ray.remote(prepare_job).options(num_cpus=cpus, num_gpus=0).remote(cells, suite_dir,
                                                                               worker_env(self.name), os.getcwd(),
                                                                               listings)
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:  # the cells build what they need themselves, as before
            return _unprepared(progress, f"its Ray task failed: {first_line(e)[:300]}")
        except BaseException:  # Ctrl-C: the task goes with the run
            ray.cancel(ref, force=True)
            raise

    def _task_resources(self, ray, n_cells: int, device: torch.device) -> dict[str, Any]:
        total = ray.cluster_resources()
        res = self.resources
        gpus = res.gpus if res.gpus is not None else (1.0 if total.get("GPU", 0) and device.type != "cpu" else 0.0)
        at_once = self.jobs if self.jobs > 1 else min(n_cells, int(total.get("CPU", 1)))
        cpus = res.cpus if res.cpus is not None else max(1.0, total.get("CPU", 1) // max(1, at_once))
        out = {"num_cpus": cpus, "num_gpus": gpus}
        if res.memory_gb:
            out["memory"] = int(res.memory_gb * 2**30)
        return out

    def run(self, cells: list[Cell], suite_dir: Path, device: torch.device, progress: LogProgress,
            options: RunOptions) -> Iterator[Outcome]:
        ray = self._ray()
        spec = self._task_resources(ray, len(cells), device)
        dev = "cuda" if spec["num_gpus"] else "cpu"
        ranks = self.resources.ranks(dev)
        if ranks > 1:  # a placement group per cell: a bundle per rank, each its share of the cell's CPUs
            spec = {**spec, "num_cpus": max(1.0, spec["num_cpus"] // ranks), "num_gpus": 1.0 if dev == "cuda" else 0}
        threads = options.threads or max(1, int(spec["num_cpus"]))
        run_options = replace(options, threads=threads, ranks=ranks, cpus=max(1, int(spec["num_cpus"])))
        refs: dict[str, Any] = {}
        owner: dict[Any, Cell] = {}
        for i, cell in enumerate(cells, 1):  # parents before children, so a child's task waits on its parent's
            after = [refs[cell.parent]] if cell.parent in refs else []
            job = make_job(cell, i, len(cells), suite_dir, dev, run_options, self.name)
            if ranks > 1:
                ref = ray_ranks(ray, job, spec, after)
            else:
                ref = ray.remote(run_job).options(**spec).remote(job, *after)
            refs[cell.id], owner[ref] = ref, cell
        remaining = list(owner)
        try:
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died, or the task could not start
                        yield _lost(owner[ref], suite_dir, f"its Ray task failed: {first_line(e)[:300]}",
                                    run_options)
        except BaseException:
            for ref in remaining:
                ray.cancel(ref, force=True)
            raise


class CellTask:
    """A Slurm array element: one cell. Checkpointable, so when Slurm preempts the job or its time runs out,
    submitit requeues it and the cell goes on from its last epoch checkpoint."""

    def __call__(self, job: Job) -> Outcome | None:
        if job.options.ranks == 1:
            return run_job(job)
        return slurm_task(job)  # one of the cell's ranks: a task each

    def checkpoint(self, job: Job):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


LOCAL_TIMEOUT_MIN = 3 * 24 * 60  # submitit's local executor kills a job after 2 minutes unless told otherwise


@register(EXECUTORS, "slurm")
class Slurm(Executor):
    """The cells as submitit job arrays (one array per wave of staged cells, the next submitted once the one
    before finished), with the suite's [resources] as sbatch options. Where Slurm is absent, submitit's
    local executor runs the same jobs on this machine (what the tests use). The job folder is
    results/<suite>/.submitit, which like the results must be on a file system the nodes share."""
    name = "slurm"
    parallel = True

    def __init__(self, jobs: int = 1, resources: Resources | None = None, cluster: str | None = None, **_: Any):
        self.jobs, self.resources, self.cluster = jobs, resources or Resources(), cluster

    def _executor(self, suite_dir: Path, device: torch.device, n_cells: int):
        try:
            import submitit
        except ImportError:
            raise UserError("--executor slurm needs submitit, which is not installed",
                            hint="pip install -e '.[slurm]' (or pip install submitit)") from None
        ex = submitit.AutoExecutor(folder=suite_dir / SUBMITIT / "%j", cluster=self.cluster)
        res = self.resources
        gpus = int(res.gpus) if res.gpus is not None else (1 if device.type == "cuda" else 0)
        ranks = res.ranks(device.type)  # a task per rank, each with its share of the cell's CPUs
        cpus = int(res.cpus) if res.cpus else (max(1, _cores() // min(n_cells, _cores())) if ex.cluster == "local"
                                               else None)
        cpus = max(1, cpus // ranks) if cpus else None
        ex.update_parameters(
            name=f"bench-{suite_dir.name}", gpus_per_node=gpus, cpus_per_task=cpus, tasks_per_node=ranks,
            mem_gb=res.memory_gb, timeout_min=res.time_min or (LOCAL_TIMEOUT_MIN if ex.cluster != "slurm" else None),
            slurm_partition=res.partition, slurm_account=res.account,
            slurm_array_parallelism=res.array_parallelism or (self.jobs if self.jobs > 1 else None),
            slurm_additional_parameters=dict(res.sbatch) or None)
        return ex, cpus

    def prepare(self, cells: list[Cell], suite_dir: Path, progress: LogProgress,
                listings: str | None = None) -> Prepared:
        """One job without GPUs, before the cells' arrays are submitted."""
        ex, _ = self._executor(suite_dir, torch.device("cpu"), 1)
        ex.update_parameters(gpus_per_node=0)
        job = None
        try:
            job = ex.submit(prepare_job, cells, suite_dir, worker_env(self.name), os.getcwd(), listings)
            return job.result()
        except Exception as e:  # refused (a GPU-only partition), or died: FailedJobError, UncompletedJobError
            return _unprepared(progress, f"its job {getattr(job, 'job_id', '(not submitted)')} gave no result: "
                                         f"{first_line(e)[:300]}")
        except BaseException:  # Ctrl-C: the job goes with the run
            if job is not None:
                job.cancel(check=False)
            raise

    def run(self, cells: list[Cell], suite_dir: Path, device: torch.device, progress: LogProgress,
            options: RunOptions) -> Iterator[Outcome]:
        ex, cpus = self._executor(suite_dir, device, len(cells))
        from submitit.helpers import as_completed

        if ex.cluster != "slurm":
            progress.say(f"[bench] no Slurm here (sbatch not found): submitit runs the jobs on this machine "
                          f"({ex.cluster} executor)")
        if cpus and not options.threads and device.type == "cpu":
            options = replace(options, threads=cpus)
        # a job is a process of its own, so the cell runs in it: a crash ends the job, which is recorded
        options = replace(options, isolate=False, ranks=self.resources.ranks(device.type), cpus=cpus)
        index = {c.id: i for i, c in enumerate(cells, 1)}
        for wave in _waves(cells):
            jobs = ex.map_array(CellTask(), [make_job(c, index[c.id], len(cells), suite_dir, device.type, options,
                                                  self.name) for c in wave])
            owner = {}
            for cell, job in zip(wave, jobs, strict=True):
                write_json(suite_dir / cell.id / JOB, {"executor": self.name, "cluster": ex.cluster,
                                                       "job_id": job.job_id, "submitted": time.time()})
                owner[job.job_id] = cell
            try:
                for job in as_completed(jobs, poll_frequency=1):
                    try:
                        yield job.results()[0]  # task 0's: rank 0 of a cell trained as several
                    except Exception as e:  # submitit's FailedJobError / UncompletedJobError: the job died
                        yield _lost(owner[job.job_id], suite_dir, f"its job {job.job_id} ended without a "
                                                                  f"result: {first_line(e)[:300]}", options)
            except BaseException:
                for job in jobs:
                    if not job.done():
                        job.cancel(check=False)
                raise


def _unprepared(progress: LogProgress, why: str) -> Prepared:
    progress.say(f"[bench] preparing the cells failed ({why}); each cell builds what it needs as it starts")
    return Prepared()


def _lost(cell: Cell, suite_dir: Path, why: str, options: RunOptions) -> Outcome:
    """A cell whose worker died outside bench's own care: recorded unless the cell left a record itself."""
    if read_result(suite_dir / cell.id) is None:
        failure_record(cell, suite_dir, torch.device("cpu"), "crashed", why, trial=options.trials.get(cell.id))
    return Outcome(cell.id, "crashed", why)


def make_executor(name: str, **settings: Any):
    if name not in EXECUTORS:
        from bench.errors import did_you_mean

        raise UserError(f"unknown executor '{name}'", key="--executor", hint=did_you_mean(name, EXECUTORS))
    return EXECUTORS[name](**settings)
