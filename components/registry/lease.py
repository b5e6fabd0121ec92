"""A lease on a registered model, held through the registry itself, across processes and machines.

Registering a version and moving ``champion`` is a read-then-write: look for a version with the same
weights, score the current champion, move the alias. Two pipelines that register into the same
model at once (two flow runs against one tracking server, or a flow and ``dvc repro``) must not
interleave there, or both may add a version for the same weights, or the worse one may end up
champion. MLflow has no compare-and-set, but creating a registered model is atomic: the store's
unique name constraint lets exactly one creator win. So the lease *is* a registered model named
``<model>.lock``, created on entry and deleted on exit; it works the same on the local SQLite store
and on a shared server (PostgreSQL behind ``mlflow server``), with no extra service.

A holder that dies leaves its lock behind; the lock carries an expiry time and a waiter deletes an
expired one. ``ttl_s`` must therefore exceed the longest registration (seconds here; the default is
ten minutes).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.errors import TransientError

LOCK_SUFFIX = ".lock"
HOLDER_TAG = "lock.holder"
EXPIRES_TAG = "lock.expires_at"


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
            tags={HOLDER_TAG: holder, EXPIRES_TAG: f"{time.time() + ttl_s:.3f}"},
            description="Registration in progress; deleted when it ends (components/registry/lease.py).",
        )
    except MlflowException as exc:
        if _lost_the_race(exc):
            return False
        raise
    return True


def _current_holder(client: MlflowClient, lock: str) -> tuple[str, float] | None:
    """(holder, expiry as a Unix time) of the lock, or None if nobody holds it."""
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
    return model.tags.get(HOLDER_TAG, "?"), expires


def _delete(client: MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


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
    while not _try_acquire(client, lock, holder, ttl_s):
        current = _current_holder(client, lock)
        if current is not None and current[1] < time.time():
            # Expired: its holder died mid-registration. Re-read just before deleting so a lease that
            # someone else has meanwhile broken and re-taken is left alone.
            again = _current_holder(client, lock)
            if again == current:
                _delete(client, lock)
            continue
        if time.monotonic() > deadline:
            who = current[0] if current else "nobody (it keeps changing hands)"
            raise TransientError(
                f"registered model {model_name!r} is locked by {who} (registered model {lock!r}) for "
                f"more than {wait_s:.0f}s; if that process is gone, delete {lock!r} in the MLflow UI"
            )
        time.sleep(poll_s)
    try:
        yield holder
    finally:
        current = _current_holder(client, lock)
        if current is not None and current[0] == holder:
            _delete(client, lock)
