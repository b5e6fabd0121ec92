"""Prefect's ephemeral server (no ``PREFECT_API_URL``), started so that a busy machine and a Ctrl-C do
not break the flow run it serves."""

from __future__ import annotations

import contextvars
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Seconds to wait for Prefect's ephemeral server (no PREFECT_API_URL) to answer. Prefect waits 20 s,
# less than a first start takes on a small, busy machine (bytecode compiled, SQLite migrations).
EPHEMERAL_SERVER_STARTUP_TIMEOUT_S = 180
EPHEMERAL_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@contextmanager
def patient_ephemeral_server() -> Iterator[None]:
    """Within: Prefect waits up to :data:`EPHEMERAL_SERVER_STARTUP_TIMEOUT_S` for its ephemeral server.

    A value the user set (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, in the environment or
    a Prefect profile) wins. Prefect reads its settings when it is imported, so setting the variable
    here would be too late; its ``temporary_settings`` is what takes effect.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout
    from prefect.settings import temporary_settings

    if EPHEMERAL_TIMEOUT_VARIABLE in os.environ or timeout.value() != timeout.default():
        yield
        return
    with temporary_settings(updates={timeout: EPHEMERAL_SERVER_STARTUP_TIMEOUT_S}):
        yield


@contextmanager
def ephemeral_server_apart_from_ctrl_c() -> Iterator[None]:
    """Without ``PREFECT_API_URL``: start Prefect's ephemeral server now, out of Ctrl-C's reach.

    A terminal's Ctrl-C goes to every process of the foreground group, so Prefect's ephemeral
    server (a child of this process) stopped at once, while the flow was still reporting its
    interrupted state: the flow printed connection tracebacks and then hung at exit, draining its
    events to the gone server. Started here from a thread that blocks SIGINT (a child inherits the
    signal mask of the thread that starts it), the server outlives the Ctrl-C, the run is recorded
    as crashed, and Prefect stops the server when this process exits (SIGTERM). The flow reuses
    it: Prefect keeps one ephemeral server per process. The start waits as long as
    :func:`patient_ephemeral_server` says.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    failed: list[BaseException] = []

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    # Prefect's settings (the startup timeout among them) live in a context variable, which a new
    # thread does not inherit: without the copied context the server waited Prefect's 20 s.
    with patient_ephemeral_server():
        context = contextvars.copy_context()
    starter = threading.Thread(
        target=context.run, args=(start,), name="prefect-ephemeral-server", daemon=True
    )
    starter.start()
    starter.join()
    if failed:
        raise failed[0]
    yield
