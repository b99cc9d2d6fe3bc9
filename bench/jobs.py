"""A cell as an executor's worker receives it (`Job`: picklable, Ray and submitit send it) and the worker's
tasks: one cell's attempt (`run_job`), preparing a run's cells (`prepare_job`), and for a cell trained as
several ranks (bench.distributed) a task per rank (`main_task`, `helper_task`: a Slurm job's tasks, a Ray
placement group's bundles), each in the environment and folder of the `bench run` that launched it."""

from __future__ import annotations

import contextlib
import os
import secrets
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.attempt import attempt
from bench.cell import Cell, Outcome, RunOptions
from bench.environment import EXECUTOR_ENV
from bench.prepare import Prepared, prepare_cells
from bench.processes import adopt
from bench.progress import LogProgress
from bench.ranks import Rank, Rendezvous, run_helper, to_env

FORWARDED_ENV = ("BENCH_CACHE", "BENCH_PLUGINS", "XDG_CACHE_HOME")  # what a remote worker must see as we do


@dataclass(frozen=True)
class Job:
    """One cell as a worker receives it: what `attempt` needs, picklable (Ray and submitit send it)."""
    cell: Cell
    suite_dir: Path
    device: str
    options: RunOptions
    index: int
    total: int
    env: dict[str, str]
    cwd: str


def run_job(job: Job, *after: Any) -> Outcome:
    """A worker's task: one cell. `after` are the parents' outcomes, which Ray hands over once they exist."""
    # relative data roots in a suite mean what they meant where `bench run` started
    if job.options.isolate:
        os.chdir(job.cwd)  # the cell's own process starts from here, with job.env
    else:  # the worker is the cell's own process (a Slurm job)
        adopt(job.env, job.cwd)
    return attempt(job.cell, job.suite_dir, torch.device(job.device), Quiet(), job.index, job.total,
                   job.options, job.env)


def prepare_job(cells: list[Cell], suite_dir: Path, env: dict[str, str], cwd: str,
                listings: str | None = None) -> Prepared:
    """A worker's preparing task (bench.prepare), in the launching run's environment and folder."""
    adopt(env, cwd)
    return prepare_cells(cells, suite_dir, listings=listings)


class Quiet(LogProgress):
    """A worker's progress when a live view of the whole suite (read from the cell folders) shows it."""

    def say(self, text: str) -> None:
        pass


def worker_env(executor: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {**forwarded, EXECUTOR_ENV: executor, **(extra or {})}


def make_job(cell: Cell, index: int, total: int, suite_dir: Path, device: str, options: RunOptions, executor: str,
             env: dict[str, str] | None = None) -> Job:
    return Job(cell, suite_dir, device, options, index, total, worker_env(executor, env), os.getcwd())


# ----------------------------------------------------------------------------------------- a task per rank
def main_task(job: Job, token: str, host: str | None = None, *after: Any) -> Outcome:
    """Rank 0's task: the cell's usual attempt, its process told it is rank 0 of launch `token` (bench.ranks).
    Whatever became of it, the helpers hear: the address rank 0 published, or that there is nothing to train."""
    rendezvous = Rendezvous(job.suite_dir / job.cell.id, token)
    env = {**job.env, **to_env(rendezvous, host)}
    try:
        return run_job(replace(job, env=env), *after)
    finally:
        if rendezvous.file.exists():  # every helper joined long ago: the cell has ended
            with contextlib.suppress(OSError):
                rendezvous.file.unlink()
        else:
            (job.suite_dir / job.cell.id).mkdir(parents=True, exist_ok=True)
            rendezvous.publish("", None)


def helper_task(job: Job, at: Rank, token: str, *after: Any) -> None:
    """Another rank's task (after the cell's parents, as rank 0's): rank 0's address from the rendezvous file,
    then the cell with it (nothing, when rank 0 found none to train). Its failure is rank 0's to record: the
    task prints it and ends, rather than fail the job whose outcome is rank 0's."""
    from bench.execute import train_as_helper

    adopt(job.env, job.cwd)
    try:
        found = Rendezvous(job.suite_dir / job.cell.id, token).address()
        if found is not None:
            run_helper(at, *found, torch.device(job.device), train_as_helper, (job.cell, job.suite_dir, job.options))
    except Exception:
        traceback.print_exc()


def slurm_task(job: Job) -> Outcome | None:
    """One task of a Slurm job that trains a cell as several ranks (submitit's job environment says which).
    A requeued job is a new launch: its token counts the restarts."""
    import submitit

    env = submitit.JobEnvironment()
    token = f"{env.job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if env.global_rank == 0:
        return main_task(job, token)
    return helper_task(job, Rank(env.global_rank, env.num_tasks, env.local_rank), token)


def ray_ranks(ray: Any, job: Job, spec: dict[str, Any], after: list) -> Any:
    """A cell's ranks as Ray tasks, one per bundle of a placement group of its own (packed onto as few nodes
    as fit): rank 0's task (whose ref is returned: the cell's outcome) runs the cell's attempt, the others
    help once it says so. The group is removed once rank 0's task has ended."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ranks, token = job.options.ranks, secrets.token_hex(6)
    bundle = {"CPU": spec["num_cpus"], **({"GPU": spec["num_gpus"]} if spec["num_gpus"] else {})}
    group = placement_group([bundle] * ranks, strategy="PACK")

    def on(i: int) -> dict[str, Any]:
        return {**spec, "max_retries": 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)}

    for r in range(1, ranks):  # Ray gives each task its GPU as device 0
        ray.remote(helper_task).options(**on(r)).remote(job, Rank(r, ranks, 0), token, *after)
    main = ray.remote(_ray_main).options(**on(0)).remote(job, token, *after)
    ray.remote(_remove_after).options(num_cpus=0).remote([main], group)  # in a list: not waited for
    return main


def _ray_main(job: Job, token: str, *after: Any) -> Outcome:
    import ray

    return main_task(job, token, ray.util.get_node_ip_address(), *after)


def _remove_after(main: list, group: Any) -> None:
    """Removes a cell's placement group once its rank 0's task ended, however: a helper still waiting for
    rank 0's word (its task died before saying it) ends with it."""
    import ray
    from ray.util.placement_group import remove_placement_group

    ray.wait(main)
    remove_placement_group(group)
