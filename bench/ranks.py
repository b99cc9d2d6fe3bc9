"""Starting a cell's ranks (bench.distributed). Here, rank 0 is the cell's own process and starts the others on
this machine (`ranks`); a Slurm job's tasks or a Ray placement group's bundles start them elsewhere
(bench.jobs), as helpers that find rank 0 through a small file in the cell's folder (`Rendezvous`). Either
way a helper trains the cell as rank 0 does, once rank 0 has said there is a cell to train (it may find the
cell finished, or held by another run)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from bench.distributed import _STATE, TIMEOUT, join, leave, told
from bench.processes import adopt, alongside, spawn_context


@dataclass(frozen=True)
class Rank:
    """Which rank a process is: `local` picks its GPU on its node."""
    rank: int
    world: int
    local: int = 0

    def device(self, device: torch.device) -> torch.device:
        if device.type == "cuda":
            torch.cuda.set_device(self.local)
            return torch.device("cuda", self.local)
        return device


def _store(host: str, port: int, ranks: int, master: bool) -> dist.TCPStore:
    return dist.TCPStore(host, port, ranks, is_master=master, timeout=TIMEOUT, wait_for_workers=False)


@dataclass(frozen=True)
class Rendezvous:
    """Where helpers started elsewhere (Slurm tasks, Ray bundles) find rank 0: a file in the cell's folder,
    which must be on a file system they share (as the results already are). `token` names one launch, so a
    requeued job never reads the address of the one before."""
    cell_dir: Path
    token: str

    @property
    def file(self) -> Path:
        return self.cell_dir / f".rendezvous-{self.token}.json"

    def publish(self, host: str, port: int | None) -> None:
        from bench.store import write_json

        write_json(self.file, {"host": host, "port": port})

    def address(self, wait_s: float = TIMEOUT.total_seconds()) -> tuple[str, int] | None:
        """Rank 0's (host, port), or None when it said there is nothing to train."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                found = json.loads(self.file.read_text())
                return None if found["port"] is None else (found["host"], int(found["port"]))
            time.sleep(0.2)
        raise TimeoutError(f"rank 0 never published its address in {self.file}")


def clear_stale(cell_dir: Path) -> None:
    """Rendezvous files of earlier launches (a killed rank 0's, or a word to helpers that nothing trained),
    removed by the rank 0 that holds the cell now."""
    launched = from_env()
    own = launched.file.name if launched else None
    for file in Path(cell_dir).glob(".rendezvous-*.json"):
        if file.name != own:
            file.unlink(missing_ok=True)


def to_env(rendezvous: Rendezvous, host: str | None = None) -> dict[str, str]:
    """What a cell's process needs to know it is rank 0 of a launch whose helpers started elsewhere, and
    (`host`) the address they reach it at (bench.worker passes it on)."""
    return {"BENCH_RENDEZVOUS": f"{rendezvous.cell_dir}|{rendezvous.token}", **({"BENCH_RANK0_HOST": host}
                                                                                  if host else {})}


def from_env() -> Rendezvous | None:
    if "BENCH_RENDEZVOUS" not in os.environ:
        return None
    folder, token = os.environ["BENCH_RENDEZVOUS"].split("|", 1)
    return Rendezvous(Path(folder), token)


@contextlib.contextmanager
def ranks(ranks: int, device: torch.device, train: Callable[..., None], args: tuple, log_dir: Path
          ) -> Iterator[torch.device]:
    """The cell's process as rank 0 of `ranks`, yielding its device: joined with helpers a launcher started
    (BENCH_RENDEZVOUS in the environment), or with helpers started here, one process each, that call
    `train(device, *args)` and log to `log_dir`/rank<N>.log. Helpers started here end with this block."""
    if ranks == 1:
        yield device
        return
    launched = from_env()
    at = Rank(0, ranks, 0)
    device = at.device(device)
    # where helpers on other nodes reach rank 0 (Ray's launcher names the node's address)
    host = (os.environ.get("BENCH_RANK0_HOST") or socket.gethostname()) if launched else "127.0.0.1"
    store = _store(host, 0, ranks, master=True)
    procs = []
    if launched:
        launched.publish(host, store.port)
    else:
        ctx, env = spawn_context(), dict(os.environ)
        for r in range(1, ranks):
            p = ctx.Process(target=helper, args=(Rank(r, ranks, r), host, store.port, device.type, train, args,
                                                 env, os.getcwd(), log_dir), name=f"bench-rank-{r}")
            p.start()
            procs.append(p)
    failed = True
    try:
        _wait_for(procs, store)
        join(store, at.rank, at.world, device)
        with _watched(procs):
            yield device
        failed = False
    except RuntimeError as e:  # gloo's lost peer, most likely: say which rank ended, and where it said why
        for r, p in enumerate(procs, 1):
            p.join(timeout=3)
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"rank {r} of the cell ended (exit code {p.exitcode}); see rank{r}.log in "
                                   "the cell's folder") from e
        raise
    finally:
        leave()
        for p in procs:  # after a failure, a helper may wait in a collective rank 0 never reaches: ended now
            p.join(timeout=0 if failed else 60)
            if p.is_alive():
                p.terminate()
                p.join()
        for r in range(1, len(procs) + 1):  # a quiet helper leaves no empty log behind
            log = Path(log_dir) / f"rank{r}.log"
            with contextlib.suppress(OSError):
                if log.stat().st_size == 0:
                    log.unlink()


GRACE_S = 20.0  # how long rank 0 may take to fail on its own once a helper died (gloo: its next collective)


def _watched(procs: list):
    """While rank 0 trains, a thread that ends its process when a helper started here died and rank 0 has
    not failed within GRACE_S of it (NCCL would wait for its timeout): the cell's record, written by the
    process that ran it, then says the process crashed, with this line at the end of its log."""
    def watch(stop) -> None:
        for r, p in enumerate(procs, 1):
            if p.exitcode not in (None, 0) and not stop.wait(GRACE_S):
                print(f"[bench] rank {r} of the cell ended (exit code {p.exitcode}); see rank{r}.log in the "
                      "cell's folder", file=sys.stderr, flush=True)
                os._exit(1)

    return alongside(watch, "bench-ranks")


def _wait_for(procs: list, store: dist.Store) -> None:
    """Until every helper started here has reached the store: one that died on its way (its log says why)
    fails the cell now, rather than when joining the group times out."""
    keys = [f"bench/ready/{r}" for r in range(1, len(procs) + 1)]
    while procs and not store.check(keys):
        for r, p in enumerate(procs, 1):
            if p.exitcode is not None:
                raise RuntimeError(f"rank {r} of the cell ended (exit code {p.exitcode}) before joining; see "
                                   f"rank{r}.log in the cell's folder")
        time.sleep(0.05)


def helper(at: Rank, host: str, port: int, device: str, train: Callable[..., None], args: tuple,
           env: dict[str, str], cwd: str, log_dir: Path) -> None:
    """A rank other than 0 in a process of its own (started by `ranks`): its output to its own log, its end
    with rank 0's process."""
    adopt(env, cwd)
    log = os.open(Path(log_dir) / f"rank{at.rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        run_helper(at, host, port, torch.device(device), train, args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def run_helper(at: Rank, host: str, port: int, device: torch.device, train: Callable[..., None], args: tuple
               ) -> None:
    """Rank `at` of the cell whose rank 0 listens at host:port: `train(device, *args)` if rank 0 says so."""
    device = at.device(device)
    store = _store(host, port, at.world, master=False)
    store.set(f"bench/ready/{at.rank}", "1")
    join(store, at.rank, at.world, device)
    try:
        if told():
            train(device, *args)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        _STATE.clear()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
