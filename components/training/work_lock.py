"""One training per fingerprint at a time, across processes (two flows, a flow and ``dvc repro``).

Two trainings of the same settings share a work folder (``<work_root>/train/<arch>-<fingerprint>``)
and so its checkpoints and the MLflow run id stored there: at once, both reopened one run and
trained into it. Global rank zero of each holds an exclusive ``flock`` on
``<work_root>/locks/train-<arch>-<fingerprint>.lock`` for the whole training; the operating system
lets go of it when the process ends, however it ends. The lock file sits outside the work folder
(which training removes while still holding the lock) and is never deleted: a waiter holds the old
file open, and a new file at the same path would let a third process in beside the first.

A training that had to wait and finds the output folder written meanwhile by the same settings
returns that result (see :func:`finished_meanwhile`) instead of training it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.processes import say, this_process
from components.tracking import Tracker
from components.training.artifacts import TRAIN_INFO

LOCKS_DIR = "locks"
REUSED_TAG = "pipeline.reused."  # on a parent run: pipeline.reused.<arch> = the run that trained it
POLL_S = 0.5


def lock_path(work_root: Path, arch: str, key: str) -> Path:
    return work_root / LOCKS_DIR / f"train-{arch}-{key[:16]}.lock"


def _holder(path: Path) -> str:
    """What the lock file says about its holder (written by it once it had the lock)."""
    try:
        return path.read_text(encoding="utf-8").strip() or "pid ?"
    except OSError:
        return "pid ?"


@contextmanager
def one_training_at_a_time(work_root: Path, arch: str, key: str) -> Iterator[bool]:
    """Hold the lock of ``arch``'s training with fingerprint ``key``; yields whether it had to wait.

    Polls (rather than blocks in ``flock``) so that a signal's handler, such as Ctrl-C's, runs and
    can end the wait.
    """
    path = lock_path(work_root, arch, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    say(
                        f"train@{arch}: waiting for another training of the same settings "
                        f"({_holder(path)}) to finish; lock file {path}"
                    )
                    waited = True
                time.sleep(POLL_S)
        me = this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {me.pid} on {me.host}\n".encode(), 0)
        yield waited
    finally:
        os.close(fd)  # lets go of the lock, if held


def finished_meanwhile(out_dir: Path, key: str, version: str) -> dict[str, Any] | None:
    """``out_dir``'s ``train_info.json`` when it was trained with fingerprint ``key`` on data
    ``version`` (by the training this one waited for), else None."""
    try:
        info = json.loads((out_dir / TRAIN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("fingerprint") != key or info.get("data_version") != version:
        return None
    return info


def record_reuse(
    tracker: Tracker, parent_id: str | None, arch: str, out_dir: Path, info: dict[str, Any]
) -> str:
    """Say that ``out_dir`` (the model ``info`` describes) is reused, tag it on this pipeline run's
    parent (its child stays with the run that trained it); returns the MLflow run that trained it."""
    run_id = str((info.get("mlflow") or {}).get("run_id", ""))
    if parent_id:
        tracker.client.set_tag(parent_id, f"{REUSED_TAG}{arch}", run_id)
    say(
        f"train@{arch}: the training waited for wrote {out_dir} with the same settings and data; "
        f"reusing it (MLflow run {run_id}), not training again"
    )
    return run_id
