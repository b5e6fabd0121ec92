"""Run a training command (``torchrun`` or the stage itself) and supervise it to its end.

Its output is streamed line by line; its exit status, and the codes its ranks recorded in
``PIPELINE_EXIT_CODE_DIR`` (torchrun exits 1 whatever its workers exited with), become one
:class:`TrainingLaunchError` saying what to do: 143 preempted (run again to resume), 2 bad input,
74 disk full, 75 a service away (retry). A timeout, an interrupt or a SIGTERM to this process stops
the command and every process under it, workers included.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from components.errors import (
    EXIT_BAD_INPUT,
    EXIT_CODE_DIR_ENV,
    EXIT_NO_SPACE,
    EXIT_PREEMPTED,
    EXIT_TRANSIENT,
    NoSpaceError,
    PipelineError,
    Preempted,
    TransientError,
    recorded_exit_codes,
)
from components.training.preemption import sigterm_raises

_TAIL_LINES = 40

# Stopping a launch (timeout, interrupt): torchrun passes SIGTERM on to its workers and SIGKILLs them
# after its own shutdown timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default); it gets that
# long plus STOP_MARGIN_S before everything under it is SIGKILLed here, then KILL_WAIT_S to go.
TORCHRUN_SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
TORCHRUN_SHUTDOWN_S = 30.0
STOP_MARGIN_S = 15.0
KILL_WAIT_S = 10.0


class TrainingLaunchError(PipelineError):
    """The multi-process training command failed (non-zero exit, timeout or missing output)."""

    def __init__(self, message: str, returncode: int | None, tail: Sequence[str]) -> None:
        self.returncode = returncode
        self.tail = list(tail)
        shown = "\n".join(self.tail[-_TAIL_LINES:])
        super().__init__(f"{message}\n--- last output lines ---\n{shown}" if shown else message)


class TrainingOutOfSpace(TrainingLaunchError, NoSpaceError):
    """A training process ran out of disk space (exit code 74); nothing was replaced."""


class TrainingUnavailable(TrainingLaunchError, TransientError):
    """The training process could not reach a service it needs (exit code 75): worth a retry."""


class TrainingPreempted(TrainingLaunchError, Preempted):
    """The training was stopped by SIGTERM or Ctrl-C with its checkpoint kept (exit code 143): the
    same launch again resumes it."""


def stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def default_stop_grace_s(env: Mapping[str, str]) -> float:
    """How long a stopped launch may take before SIGKILL: torchrun's own shutdown timeout plus a margin."""
    try:
        own = float(env.get(TORCHRUN_SHUTDOWN_ENV, TORCHRUN_SHUTDOWN_S))
    except ValueError:
        own = TORCHRUN_SHUTDOWN_S
    return max(own, 0.0) + STOP_MARGIN_S


def run_streaming(
    command: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    on_line: Callable[[str], None] = stderr_line,
    timeout_s: float | None = None,
    stop_grace_s: float | None = None,
    kill_wait_s: float = KILL_WAIT_S,
) -> None:
    """Run ``command``, passing each output line (stdout and stderr merged) to ``on_line`` as it comes.

    Raises :class:`TrainingLaunchError` with the exit status and the last lines on failure:
    :class:`TrainingPreempted` when the command or any rank exited 143 (stopped by SIGTERM with its
    checkpoint kept: run again to resume), :class:`TrainingUnavailable` (a retry may help) when one
    exited 75, and a plain :class:`TrainingLaunchError` with ``returncode`` 2 (bad input, no retry)
    when one exited 2.
    The ranks' codes come from the files they record in ``PIPELINE_EXIT_CODE_DIR`` (a temporary
    folder set here), since torchrun itself exits 1.

    On a timeout or an interrupt the command's process group gets SIGTERM (torchrun passes it on to
    its workers, which run in sessions of their own); after ``stop_grace_s`` (default: torchrun's
    shutdown timeout plus :data:`STOP_MARGIN_S`) the group and every process that was under the
    command, workers included, get SIGKILL. A SIGTERM to this process (main thread) stops the launch
    the same way, then raises :class:`TrainingPreempted` with what the ranks recorded.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    grace_s = default_stop_grace_s(env) if stop_grace_s is None else stop_grace_s
    what = " ".join(command)
    with tempfile.TemporaryDirectory(prefix="exit-codes-", ignore_cleanup_errors=True) as exit_dir:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**env, EXIT_CODE_DIR_ENV: exit_dir},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, apart from the caller's
        )
        reader = _start_reader(process, tail, on_line)
        try:
            returncode, preempted = _wait(
                process, timeout_s, what, lambda: _stop(process, grace_s, kill_wait_s)
            )
        except TrainingLaunchError as exc:  # timed out
            reader.join(timeout=5)
            raise TrainingLaunchError(str(exc), None, tail) from None
        reader.join(timeout=5)
        ranks = recorded_exit_codes(exit_dir) if returncode != 0 else {}
    if returncode == 0:
        return
    _raise_failed(returncode, ranks, what, tail, preempted)


def _start_reader(
    process: subprocess.Popen[str], tail: collections.deque[str], on_line: Callable[[str], None]
) -> threading.Thread:
    """A thread passing each line of ``process``'s output to ``on_line`` (and keeping the last ones)."""

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, name="launch-output", daemon=True)
    reader.start()
    return reader


def _wait(
    process: subprocess.Popen[str], timeout_s: float | None, what: str, stop: Callable[[], None]
) -> tuple[int, bool]:
    """``process``'s exit status and whether this process was preempted meanwhile. A timeout raises
    :class:`TrainingLaunchError`; a SIGTERM here (a preempted job) or an interrupt ``stop()`` the
    command first: torchrun passes SIGTERM on to the ranks, which write their checkpoints, exit 143."""
    with sigterm_raises(f"training stopped by SIGTERM: {what}"):
        try:
            return process.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            stop()
            raise TrainingLaunchError(
                f"training did not finish within {timeout_s:g} s: {what}", None, []
            ) from None
        except Preempted:
            stop()
            return (EXIT_PREEMPTED if process.returncode is None else process.returncode), True
        except BaseException:
            stop()
            raise


def _raise_failed(
    returncode: int, ranks: dict[int, int], what: str, tail: Sequence[str], preempted: bool
) -> None:
    """Raise the :class:`TrainingLaunchError` for a launch that exited ``returncode``, whose ranks
    recorded ``ranks``; ``preempted``: this process got SIGTERM and stopped it."""
    codes = {returncode, *ranks.values()}
    by = ", ".join(f"rank {rank} exited {code}" for rank, code in sorted(ranks.items()))
    why = f"{by}; the launcher exited {returncode}" if by else f"exited with status {returncode}"
    if preempted or EXIT_PREEMPTED in codes:
        raise TrainingPreempted(
            f"training was stopped with its checkpoint kept ({why}); run it again to resume: {what}",
            EXIT_PREEMPTED,
            tail,
        )
    if EXIT_BAD_INPUT in codes:
        raise TrainingLaunchError(f"training rejected its input ({why}): {what}", EXIT_BAD_INPUT, tail)
    if EXIT_NO_SPACE in codes:
        raise TrainingOutOfSpace(f"training ran out of disk space ({why}): {what}", EXIT_NO_SPACE, tail)
    if EXIT_TRANSIENT in codes:
        raise TrainingUnavailable(f"training could not reach a service ({why}): {what}", EXIT_TRANSIENT, tail)
    raise TrainingLaunchError(f"training exited with status {returncode}: {what}", returncode, tail)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(process: subprocess.Popen[str], grace_s: float, kill_wait_s: float) -> None:
    """Stop ``process`` (torchrun) and every process under it, workers included.

    torchrun starts each worker in a session of its own, so a signal to ``process``'s group reaches
    torchrun alone; on SIGTERM it passes the signal on to its workers and SIGKILLs the ones still
    there after its own shutdown timeout. So: note the processes under it, SIGTERM the group, give
    it ``grace_s`` (longer than its own timeout, so its kill goes first), then SIGKILL the group and
    every noted process still running (a rank stuck in a collective ignores SIGTERM; torchrun may be
    stuck itself), and wait up to ``kill_wait_s`` for them to go.
    """
    under = {child.pid: child for child in _descendants(process.pid)}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:  # until reaped here, pid is torchrun's
        under.update((child.pid, child) for child in _descendants(process.pid))  # started meanwhile
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0.0)))
    if process.poll() is None:
        under.update((child.pid, child) for child in _descendants(process.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for child in under.values():
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks that the pid still names the process noted above
    deadline = time.monotonic() + kill_wait_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=kill_wait_s)
    while any(_alive(child) for child in under.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
