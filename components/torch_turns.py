"""In-process torch work one job at a time, multi-process launches one at a time, and a stop that
both honour, for callers that run stages in threads (the flow).

Training reseeds and draws from torch's process-wide random generator (dropout masks), and loading
a model draws from it too (layer initialisation before the weights are loaded). Two such jobs in
threads of one process would interleave their draws, so the weights would depend on timing and no
longer match what ``dvc repro`` (one process per stage) produces. Jobs wrapped in
:func:`one_at_a_time` take turns instead.

Launches of multi-process training (:func:`one_launch_at_a_time`) take turns with each other, not
with the in-process work: each ``torchrun`` starts a process on every device it names
(``train.devices: auto`` = all GPUs), so two at once would share every GPU and its memory.

Ctrl-C reaches only the main thread; jobs in worker threads would run to their end (and DVC would
record them). :func:`request_stop` asks them to stop: a job not started yet raises
:class:`StopRequested` when its turn comes, and a running training checks :func:`stop_requested`
between batches (``components.training.callbacks.StopWhen``) or stops its launch.

The locks and the stop live here, not in ``flows/``: Prefect pickles a served flow's module by value
to start its runs, and neither a lock nor an event can be pickled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_TORCH_WORK = threading.Lock()
_LAUNCHES = threading.Lock()
_STOP = threading.Event()


class StopRequested(Exception):
    """The caller was interrupted and asked its jobs to stop: this one stopped, writing nothing."""


def request_stop() -> None:
    """Ask every job of this process, running or waiting for its turn, to stop."""
    _STOP.set()


def clear_stop() -> None:
    """Let jobs run again (a new flow run in the same process)."""
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def raise_if_stop_requested(what: str) -> None:
    """Raise :class:`StopRequested` naming ``what`` if a stop was requested."""
    if _STOP.is_set():
        raise StopRequested(f"{what}: stopped, the run was interrupted")


def one_at_a_time(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` while no other in-process torch job runs, unless stopped."""
    with _TORCH_WORK:
        raise_if_stop_requested(getattr(function, "__name__", "job"))
        return function(*args, **kwargs)


def one_launch_at_a_time(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` while no other multi-process training launch runs, unless stopped."""
    with _LAUNCHES:
        raise_if_stop_requested(getattr(function, "__name__", "launch"))
        return function(*args, **kwargs)
