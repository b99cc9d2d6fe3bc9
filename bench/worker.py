"""One cell in a child process (as timm's bulk_runner runs one model per process): a segfault in a native
kernel, the out-of-memory killer or a hard exit ends that cell, which is recorded with its cause, and never
the suite.

Children come from a fork server that imported torch, timm and bench once and has touched neither threads
nor CUDA, so a cell starts in milliseconds and CUDA initialises cleanly in each child. The child relays its
progress calls to the parent through a pipe (the bars keep moving), writes its stdout and stderr to
`<cell>/stderr.log`, and ends itself when the parent dies: nothing outlives a killed `bench run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.cell import Cell
from bench.claims import Claim
from bench.errors import first_line
from bench.execute import execute, failure_record
from bench.processes import adopt, spawn_context
from bench.store import LOG, disk_full, full_disk_path

TAIL_LINES = 20


class _Relay:
    """The child's stand-in for the parent's progress: every call goes down the pipe."""

    def __init__(self, conn):
        self.conn = conn

    def __getattr__(self, name: str):
        return lambda *args: self.conn.send((name, args))


def _exit_with_parent(lifeline) -> None:
    try:
        lifeline.recv()  # the parent never sends: this returns only when its end closes
    except (EOFError, OSError):
        pass
    os._exit(1)


def _child(cell: Cell, suite_dir: Path, device: str, index: int, total: int, options, conn, lifeline,
           env: dict[str, str], cwd: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this child
    # the fork server kept the environment and folder of the moment it started; the cell gets today's
    os.environ.clear()
    log = None
    try:
        adopt(env, cwd)
        log = os.open(suite_dir / cell.id / LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(log, 1)
        os.dup2(log, 2)
        threading.Thread(target=_exit_with_parent, args=(lifeline,), daemon=True).start()
        record = execute(cell, suite_dir, torch.device(device), _Relay(conn), index, total, options)
    except Exception as e:  # no record could be written (a full disk), or the process never got to the cell
        text, logged = traceback.format_exc(), False
        with contextlib.suppress(OSError):  # into stderr.log (not the console of the fork server), room allowing
            if log is not None:
                sys.stderr.write(text)
                sys.stderr.flush()
                logged = True
        with contextlib.suppress(OSError):  # the parent says it, and keeps it when the log could not
            conn.send(("__error__", ({"error": first_line(e, typed=True), "traceback": text, "logged": logged,
                                      "full_disk": full_disk_path(e)},)))
        sys.exit(1)
    conn.send(("__record__", (record,)))
    sys.stdout.flush()
    sys.stderr.flush()


# Set by an executor that runs cells from several threads, when Ctrl-C reaches its main thread: every
# thread waiting on a cell process stops it, as the main thread's own wait would.
STOP = threading.Event()


def run_in_child(cell: Cell, suite_dir: Path, device: torch.device, progress, index: int, total: int,
                 options, claim: Claim, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cell` in a child process (with `env` over this process's environment, e.g. the GPU it may see);
    its record, or the record of how the child died."""
    ctx = spawn_context()
    (suite_dir / cell.id).mkdir(parents=True, exist_ok=True)
    conn, child_conn = ctx.Pipe()
    life_recv, life_send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cell, suite_dir, str(device), index, total, options, child_conn,
                                            life_recv, {**os.environ, **(env or {})}, os.getcwd()),
                       name=f"bench-cell-{cell.id}")
    proc.start()
    child_conn.close()
    life_recv.close()
    record, error = None, None
    try:
        claim.update(pid=proc.pid)  # `bench status` names the process that trains the cell, not this one
        while True:
            if STOP.is_set():
                raise KeyboardInterrupt
            claim.beat()
            if not conn.poll(1.0):
                if not proc.is_alive() and not conn.poll(0):
                    break
                continue
            try:
                name, args = conn.recv()
            except EOFError:
                break
            if name == "__record__":
                record = args[0]
            elif name == "__error__":
                error = args[0]
            else:
                getattr(progress, name)(*args)
                if name == "epoch":
                    claim.update(epoch=args[0]["epoch"])
        proc.join()
    except BaseException:  # Ctrl-C, SIGTERM: stop the child; its last checkpoint stays resumable
        if proc.is_alive():
            proc.terminate()
        proc.join()
        raise
    finally:
        conn.close()
        life_send.close()
    log = suite_dir / cell.id / LOG
    if record is not None:
        if log.is_file() and log.stat().st_size == 0:  # a quiet cell leaves no empty file behind
            log.unlink(missing_ok=True)
        return record
    tail = _tail(log)
    if error is not None and not error["logged"]:
        # the child could not write its traceback to its log (a full disk), or had not opened the log yet
        with contextlib.suppress(OSError):  # its end freed what its writes held: there may be room now
            with log.open("a") as f:
                f.write(error["traceback"])
        tail = [*tail, *error["traceback"].splitlines()][-TAIL_LINES:]
    if error is not None and error["full_disk"]:
        raise disk_full(error["full_disk"])  # as when the cell runs in this process: the run stops, and says where
    return failure_record(cell, suite_dir, device, "crashed", _cause(proc.exitcode, error, bool(tail)),
                          exitcode=proc.exitcode, stderr_tail=tail, trial=options.trials.get(cell.id))


def _cause(exitcode: int | None, error: dict[str, Any] | None, logged: bool) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = {"SIGKILL": " (the kernel's out-of-memory killer sends this: see `dmesg`)",
               "SIGSEGV": " (a crash in native code)", "SIGBUS": " (often a full disk under a memory-mapped file)",
               "SIGABRT": " (an abort in native code)"}.get(name, "")
        return f"the cell's process was killed by {name}{why}; the last lines of its stderr.log are in the record"
    if error is not None:
        return f"the cell's process failed before writing a result: {error['error']}; its traceback is in its stderr.log"
    return (f"the cell's process exited with code {exitcode} before writing a result; "
            + ("see its stderr.log" if logged else "it wrote nothing to its stderr.log"))


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return []
