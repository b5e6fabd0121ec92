"""In-process torch work one job at a time, and multi-process launches one at a time, for callers
that run stages in threads (the flow).

Training reseeds and draws from torch's process-wide random generator (dropout masks), and loading
a model draws from it too (layer initialisation before the weights are loaded). Two such jobs in
threads of one process would interleave their draws, so the weights would depend on timing and no
longer match what ``dvc repro`` (one process per stage) produces. Jobs wrapped in
:func:`one_at_a_time` take turns instead.

Launches of multi-process training (:func:`one_launch_at_a_time`) take turns with each other, not
with the in-process work: each ``torchrun`` starts a process on every device it names
(``train.devices: auto`` = all GPUs), so two at once would share every GPU and its memory.

The locks live here, not in ``flows/``: Prefect pickles a served flow's module by value to start its
runs, and a lock cannot be pickled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_TORCH_WORK = threading.Lock()
_LAUNCHES = threading.Lock()


def one_at_a_time(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` while no other in-process torch job runs."""
    with _TORCH_WORK:
        return function(*args, **kwargs)


def one_launch_at_a_time(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` while no other multi-process training launch runs."""
    with _LAUNCHES:
        return function(*args, **kwargs)
