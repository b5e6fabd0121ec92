"""Stopping a training on SIGTERM or Ctrl-C with a checkpoint to resume from (exit code 143).

SIGTERM is what Kubernetes and SLURM send to preempt a job, some seconds before SIGKILL. Left to
Lightning, it became a ``SystemExit`` without a code at the next batch (exit 0: DVC recorded a
training that never finished) and Ctrl-C a ``sys.exit(1)`` wherever it landed.

- During the training loop :class:`StopSignals` takes both signals over: its handler only notes the
  signal; the resume checkpoint callback (:class:`~components.training.trainer.ResumeCheckpoint`)
  asks :meth:`StopSignals.requested` at the end of each training step (every DDP rank together, so
  all stop at the same step), writes ``last.ckpt`` there and raises :class:`Preempted`. A second
  Ctrl-C raises ``KeyboardInterrupt`` at once.
- Outside the loop (loading data, opening the MLflow run, writing the model folder)
  :func:`sigterm_raises` turns SIGTERM into :class:`Preempted` at once: nothing a rerun needs is
  being written then, and the model folder is written atomically.

Signal handlers can only be set from the main thread; elsewhere both do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from components.errors import Preempted

if TYPE_CHECKING:
    import lightning as L

_HANDLED = (signal.SIGTERM, signal.SIGINT)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopSignals:
    """Notes SIGTERM/SIGINT while installed, and tells every rank at once whether to stop."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.received = 0  # the first signal noted, 0 for none
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take SIGTERM and SIGINT over (main thread only); :meth:`restore` gives them back."""
        if not _in_main_thread() or self._previous:
            return
        for signum in _HANDLED:
            self._previous[signum] = signal.signal(signum, self._note)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        self.received = self.received or signum

    def requested(self, trainer: L.Trainer) -> int:
        """The signal to stop for, or 0: the same answer on every rank.

        Under DDP one all-reduce (max) per call: the ranks get SIGTERM at slightly different times,
        and a rank stopping alone would leave the others waiting in a collective.
        """
        code = self.received
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([code], dtype=torch.int64, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            code = int(flag.item())
        return code

    def stopped(self, code: int, step: int, checkpoint: Path) -> Preempted:
        """The exception that ends the fit after ``checkpoint`` was written at ``step``."""
        return Preempted(
            f"train@{self.label}: stopped by {signal.Signals(code).name} at step {step}; nothing was "
            f"written to the model folder; run the same command again to resume from {checkpoint}"
        )


@contextlib.contextmanager
def sigterm_raises(message: str) -> Iterator[None]:
    """Within: the first SIGTERM raises :class:`Preempted` (``message``) in the main thread; later
    ones are ignored while the block cleans up. Elsewhere than the main thread: nothing changes."""
    if not _in_main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise Preempted(message)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
