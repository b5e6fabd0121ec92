"""Mini-batches for training: sliced from resident tensors, or streamed by a ``DataLoader``.

Both paths draw the same per-epoch order from :class:`EpochSampler` (a permutation seeded by
``seed`` and the epoch), so they see the same batches in the same order; which one is used is
``train.in_memory``.

- :class:`TensorBatches` holds the whole split as tensors on the training device and gathers each
  batch with one index operation: no per-sample Python, no host-to-device copy per step. This is
  the default for data that fits in (GPU) memory.
- :func:`streaming_loader` is a ``DataLoader`` with worker processes for data that does not.

Both are resumable: Lightning saves their ``state_dict`` in the checkpoint and restores it, so a
run killed mid-epoch continues with the next unseen batch instead of restarting the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, permuted per epoch with a generator seeded by ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch (it looks for ``loader.sampler``).
    ``skip`` drops the first indices of the next epoch's order once (resuming mid-epoch).
    """

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's order as an int64 CPU tensor of length n."""
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(self.order()[skip:].tolist())

    def __len__(self) -> int:
        return self.n


class _ResumePosition:
    """Counts the batches handed out in the current epoch: the resume point of a checkpoint.

    Lightning fetches no batch ahead from a loader whose length it knows (both of ours), so at a
    checkpoint the count handed out equals the count trained on.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.served = 0
        self._pending: tuple[int, int] | None = None  # (epoch, batches) restored from a checkpoint

    def start(self, epoch: int) -> int:
        """Begin an epoch; return how many of its batches were consumed before a restart."""
        first = 0
        if self._pending is not None and self._pending[0] == epoch:
            first = self._pending[1]
        self._pending = None
        self.epoch, self.served = epoch, first
        return first

    def restore(self, state: dict[str, Any]) -> None:
        self._pending = (int(state["epoch"]), int(state["consumed"]))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.served}


class TensorBatches:
    """Batches gathered from tensors that already sit on the training device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, shuffle: bool) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x  # (N, ...) on the device
        self.y = y  # (N, K) on the device
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(x), seed, shuffle)  # Lightning calls sampler.set_epoch
        self.batch_sampler = None  # looked up next to ``sampler`` by Lightning's loader checks
        self._position = _ResumePosition()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order().to(self.x.device)  # (N,) one small copy per epoch
        first = self._position.start(self.sampler.epoch)
        for start in range(first * self.batch_size, len(order), self.batch_size):
            index = order[start : start + self.batch_size]  # (B,)
            self._position.served += 1
            yield self.x[index], self.y[index]  # (B, ...), (B, K)

    def state_dict(self) -> dict[str, int]:
        return self._position.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position.restore(state)


class _ResumableLoader(DataLoader[tuple[torch.Tensor, ...]]):
    """A ``DataLoader`` over an :class:`EpochSampler` that can continue mid-epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = _ResumePosition()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.batch_sampler.sampler  # type: ignore[union-attr]
        first = self._position.start(sampler.epoch)
        sampler.skip = first * self.batch_size  # type: ignore[operator]
        for batch in super().__iter__():
            self._position.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self._position.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position.restore(state)


def streaming_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, shuffle: bool, num_workers: int
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A ``DataLoader`` with ``num_workers`` workers and the same order as :class:`TensorBatches`."""
    return _ResumableLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        sampler=EpochSampler(len(x), seed, shuffle),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
