"""A lease on a registered model, held through the registry itself, across processes and machines.

Registering a version and moving ``champion`` is a read-then-write: look for a version with the same
weights, score the current champion, move the alias. Two pipelines that register into the same
model at once (two flow runs against one tracking server, or a flow and ``dvc repro``) must not
interleave there, or both may add a version for the same weights, or the worse one may end up
champion. MLflow has no compare-and-set, but creating a registered model is atomic: the store's
unique name constraint lets exactly one creator win. So the lease *is* a registered model named
``<model>.lock``, created on entry and deleted on exit; it works the same on the local SQLite store
and on a shared server (PostgreSQL behind ``mlflow server``), with no extra service.

A holder that dies leaves its lock behind. The lock records the holding process (host, pid, start
time: :mod:`components.processes`), so a waiter on the same host takes over at once a lock whose
process is gone (SIGKILL, out of memory), and says so. A lock held elsewhere, or by a live process,
is waited for, saying who holds it and until when (when waiting starts, then every
:data:`NOTICE_EVERY_S`); it also carries an expiry time, after which any waiter deletes it, so a
holder on another machine that died frees it too. ``ttl_s`` must therefore exceed the longest
registration (seconds here; the default is ten minutes).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.errors import TransientError
from components.processes import ProcessRef, is_gone, say, this_process

LOCK_SUFFIX = ".lock"
HOLDER_TAG = "lock.holder"
EXPIRES_TAG = "lock.expires_at"
PROCESS_PREFIX = "lock.process."  # lock.process.host, .pid, .started, .pid_namespace
NOTICE_EVERY_S = 30.0  # how often a waiter repeats who holds the lease


def lock_name(model_name: str) -> str:
    """The registered model that stands for the lease on ``model_name``."""
    return f"{model_name}{LOCK_SUFFIX}"


def _lost_the_race(exc: MlflowException) -> bool:
    """True when creating the lock failed because someone else holds (or just held) it.

    RESOURCE_ALREADY_EXISTS is the plain case. RESOURCE_DOES_NOT_EXIST is the holder letting go in
    between: MLflow's SQL store, on the unique-name violation, reads the existing model back to word
    its error, and that read fails once the holder has deleted the lock. Both mean "try again".
    """
    return exc.error_code in {"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"}


def _try_acquire(client: MlflowClient, lock: str, holder: str, ttl_s: float) -> bool:
    try:
        client.create_registered_model(
            lock,
            tags={
                HOLDER_TAG: holder,
                EXPIRES_TAG: f"{time.time() + ttl_s:.3f}",
                **this_process().tags(PROCESS_PREFIX),
            },
            description="Registration in progress; deleted when it ends (components/registry/lease.py).",
        )
    except MlflowException as exc:
        if _lost_the_race(exc):
            return False
        raise
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, until when, and (locks taken by this version on) which process."""

    name: str
    expires: float  # Unix time
    process: ProcessRef | None

    def until(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.expires))


def _current_holder(client: MlflowClient, lock: str) -> Holder | None:
    """The holder of the lock, or None if nobody holds it."""
    try:
        model = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    try:
        expires = float(model.tags.get(EXPIRES_TAG, "0"))
    except ValueError:
        expires = 0.0
    return Holder(model.tags.get(HOLDER_TAG, "?"), expires, ProcessRef.from_tags(model.tags, PROCESS_PREFIX))


def _why_breakable(holder: Holder) -> str | None:
    """Why the lock of ``holder`` may be taken over now, or None while it must be waited for."""
    if holder.process is not None and is_gone(holder.process):
        return "a process that is gone"
    if holder.expires < time.time():
        return f"whose lease expired at {holder.until()}"
    return None


def _delete(client: MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _due(last_said: float) -> bool:
    return time.monotonic() - last_said >= NOTICE_EVERY_S


@contextmanager
def registry_lease(
    client: MlflowClient,
    model_name: str,
    *,
    ttl_s: float = 600.0,
    wait_s: float = 900.0,
    poll_s: float = 0.5,
) -> Iterator[str]:
    """Hold the lease on ``model_name`` for the ``with`` body; yields the holder id.

    Waits up to ``wait_s`` for another holder to finish (or its lease to expire), then raises
    :class:`TransientError` so an orchestrator may retry later.
    """
    lock = lock_name(model_name)
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    told: tuple[str, float] | None = None  # whom a waiting message last named, and when
    while not _try_acquire(client, lock, holder, ttl_s):
        current = _current_holder(client, lock)
        reason = _why_breakable(current) if current is not None else None
        if current is not None and reason is not None:
            # Re-read just before deleting so a lease that someone else has meanwhile broken and
            # re-taken is left alone.
            if _current_holder(client, lock) == current:
                _delete(client, lock)
                say(f"register: took over the registry lease of {current.name}, {reason} ({lock!r})")
            continue
        if time.monotonic() > deadline:
            who = current.name if current else "nobody (it keeps changing hands)"
            raise TransientError(
                f"registered model {model_name!r} is locked by {who} (registered model {lock!r}) for "
                f"more than {wait_s:.0f}s; if that process is gone, delete {lock!r} in the MLflow UI"
            )
        if current is not None and (told is None or told[0] != current.name or _due(told[1])):
            say(
                f"register: waiting for the registry lease on {model_name!r}: held by {current.name} "
                f"until {current.until()} (registered model {lock!r}); giving up after {wait_s:.0f}s"
            )
            told = (current.name, time.monotonic())
        time.sleep(poll_s)
    try:
        yield holder
    finally:
        current = _current_holder(client, lock)
        if current is not None and current.name == holder:
            _delete(client, lock)
