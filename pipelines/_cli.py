"""What every stage CLI shares: offline environment defaults and user-facing error handling."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from components.config import ALL_ARCHITECTURES, Architecture
from components.errors import (
    EXIT_PREEMPTED,
    ParamsError,
    PipelineError,
    Preempted,
    exit_code,
    no_space_error,
    record_exit_code,
)

T = TypeVar("T")

# Telemetry off unless the user explicitly turned it on: nothing leaves the machine by default.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# MLflow's HTTP retries, bounded: its own defaults (7 retries, backoff factor 2, 120 s timeout) kept
# one call to a tracking server that went away retrying for about 4 minutes. With these, a call to a
# server that refuses connections gives up after about 65 s (waits of 2, 4, 8, 16 and 32 s, each
# plus up to 1 s), one to a server that accepts but never answers after 7 x 20 s more; a server
# back within that minute is not noticed. User values win.
TRACKING_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

# After SIGTERM or Ctrl-C a stage or flow process ends within this many seconds, whatever it is
# blocked in (an MLflow call retrying against a gone server, Prefect draining its logs to a gone
# API, worker threads joined at exit). Override with PIPELINE_EXIT_GRACE_S.
EXIT_GRACE_S = 8.0
EXIT_GRACE_ENV = "PIPELINE_EXIT_GRACE_S"
EXIT_INTERRUPTED = 130  # 128 + SIGINT

console = Console(stderr=True)


def set_offline_defaults() -> None:
    """Set the telemetry opt-outs and the bounded MLflow HTTP retries in this process's environment
    (user values win)."""
    for key, value in {**OFFLINE_DEFAULTS, **TRACKING_HTTP_DEFAULTS}.items():
        os.environ.setdefault(key, value)


def exit_grace_s() -> float:
    """:data:`EXIT_GRACE_S`, or ``PIPELINE_EXIT_GRACE_S`` when set to a positive number."""
    try:
        value = float(os.environ.get(EXIT_GRACE_ENV, ""))
    except ValueError:
        return EXIT_GRACE_S
    return value if value > 0 else EXIT_GRACE_S


def exit_within_grace_after_a_signal(stage: str) -> None:
    """From now on, SIGTERM or SIGINT ends this process within :func:`exit_grace_s` seconds.

    The signal still takes its usual path (Ctrl-C, Prefect's or Lightning's handlers); a watcher
    thread learns of it through Python's signal wakeup file descriptor, which every Python-level
    handler triggers, and ends the process if it is still alive when the grace is over. Only in the
    main thread of a process started as ``python -m pipelines.<stage>`` or ``flows.<name>`` (not in a
    test runner or another program calling a CLI function), and only if no one else (an asyncio
    loop) uses the wakeup descriptor.
    """
    started_as = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "") or ""
    if started_as.split(".")[0] not in ("pipelines", "flows"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if previous != -1:  # someone else's: leave it as it was
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        return
    threading.Thread(target=_exit_after_grace, args=(stage, read_end), name="exit-grace", daemon=True).start()


def _exit_after_grace(stage: str, read_end: int) -> None:
    stopping = {int(signal.SIGTERM), int(signal.SIGINT)}
    received: set[int] = set()
    while not received:
        received = stopping & set(os.read(read_end, 64))
    code = EXIT_PREEMPTED if signal.SIGTERM in received else EXIT_INTERRUPTED
    grace = exit_grace_s()
    time.sleep(grace)
    _stop_prefect_ephemeral_server()  # a child that os._exit would leave running
    name = "SIGTERM" if code == EXIT_PREEMPTED else "SIGINT"
    message = f"{stage} stopped: still busy {grace:g} s after {name} (a service not answering?); exit {code}"
    os.write(2, f"\n{message}\n".encode())
    record_exit_code(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _stop_prefect_ephemeral_server() -> None:
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return
    for server in list(server_module.SubprocessASGIServer._instances.values()):
        process = server.server_process
        if process is None:
            continue
        with contextlib.suppress(Exception):
            process.terminate()
            try:
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                process.kill()


def run_stage(stage: str, body: Callable[[], T]) -> T:
    """Run ``body``; a :class:`PipelineError` becomes a one-paragraph message and an exit code:
    143 when stopped by SIGTERM/Ctrl-C with its checkpoint kept (run again to resume), 75 when a
    service did not answer (worth a retry), 74 when the disk is full, 2 for bad input.

    With ``PIPELINE_EXIT_CODE_DIR`` set (by :mod:`components.training.launch`, for ranks under
    ``torchrun``, which exits 1 whatever its workers exit with) the code is also recorded there.
    """
    set_offline_defaults()
    exit_within_grace_after_a_signal(stage)
    try:
        try:
            return body()
        except OSError as exc:  # a full disk outside the atomic writers (a checkpoint, a log)
            full = no_space_error(exc, getattr(exc, "filename", None) or stage)
            if full is None:
                raise
            raise full from exc
    except PipelineError as exc:
        what = "stopped" if isinstance(exc, Preempted) else "failed"
        console.print(
            f"[bold red]{stage} {what}:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        code = exit_code(exc)
        record_exit_code(code)
        sys.exit(code)


def architecture(name: str) -> Architecture:
    """``--arch`` checked against the known architectures."""
    if name not in ALL_ARCHITECTURES:
        raise ParamsError(f"--arch {name!r}: unknown architecture (known: {', '.join(ALL_ARCHITECTURES)})")
    return name


def run_tags(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from ``--tag`` options as a mapping."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParamsError(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key] = value
    return tags
