"""Mini-batches for training: sliced from resident tensors, or streamed by a ``DataLoader``.

Training batches come in blocks of ``train.steps_per_call`` consecutive mini-batches (one
``training_step`` call runs one optimizer step per mini-batch of its block, see
:class:`~components.training.module.Classifier`); a block is gathered with one index operation
and the module splits it back into mini-batches of ``batch_size`` rows, so the mini-batches are
the same whatever the block size.

Both paths draw the same per-epoch order from :class:`EpochSampler` (a permutation seeded by
``seed`` and the epoch), so they see the same batches in the same order; which one is used is
``train.in_memory``.

- :class:`TensorBatches` holds the whole split as tensors on the training device and gathers each
  batch with one index operation: no per-sample Python, no host-to-device copy per step. This is
  the default for data that fits in (GPU) memory.
- :func:`streaming_loader` is a ``DataLoader`` with worker processes for data that does not.

Both are resumable: Lightning saves their ``state_dict`` (the epoch's mini-batches consumed so
far) in the checkpoint and restores it, so a run killed mid-epoch continues with the next unseen
mini-batch instead of restarting the epoch, with any block size.

Under DDP every rank draws the same epoch permutation and keeps its own slice of it (rank ``r`` of
``W`` takes positions ``r, r+W, r+2W, ...``), so the two paths stay identical on every rank. For
training the permutation is first cut to a multiple of ``W``: every rank gets the same number of
distinct samples and so the same number of steps (up to ``W - 1`` samples sit out an epoch, a
different few each epoch). Validation keeps every sample exactly once (slices differ by at most
one sample; Lightning and torchmetrics weight the reduction by count). The Trainer is built with
``use_distributed_sampler=False``: Lightning would otherwise wrap the ``DataLoader``'s sampler in
its ``DistributedSamplerWrapper``, which re-shuffles it and breaks both the shared order and the
mid-epoch resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor]
PrivateBlock = tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]  # DP-SGD: rows, targets, rows per step


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, permuted per epoch with a generator seeded by ``(seed, epoch)``; this rank's slice.

    Lightning calls :meth:`set_epoch` before each epoch (it looks for ``loader.sampler``).
    ``skip`` drops the first indices of the next epoch's order once (resuming mid-epoch).
    With ``world_size`` > 1 each rank keeps every ``world_size``-th index starting at ``rank``; ``even``
    first cuts the permutation to a multiple of ``world_size`` so that all ranks get as many.
    """

    def __init__(
        self, n: int, seed: int, shuffle: bool, *, rank: int = 0, world_size: int = 1, even: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def full_order(self) -> torch.Tensor:
        """This epoch's order over all ranks: an int64 CPU tensor of length n."""
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator)

    def order(self) -> torch.Tensor:
        """This rank's share of the epoch's order (all of it in a single process)."""
        order = self.full_order()  # (n,)
        if self.world_size == 1:
            return order
        if self.even:
            order = order[: self.n - self.n % self.world_size]  # (n // W * W,)
        return order[self.rank :: self.world_size]  # (len(self),)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(self.order()[skip:].tolist())

    def __len__(self) -> int:
        if self.even:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))


class _ResumePosition:
    """Counts the mini-batches handed out in the current epoch: the resume point of a checkpoint.

    Lightning fetches no block ahead from a loader whose length it knows (both of ours), so at a
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
    """Blocks of ``steps_per_call`` mini-batches gathered from tensors already on the training device."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int,
        shuffle: bool,
        *,
        steps_per_call: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x  # (N, ...) on the device
        self.y = y  # (N, K) on the device
        self.batch_size = batch_size  # rows of one mini-batch
        self.block_rows = batch_size * steps_per_call
        # Lightning calls sampler.set_epoch. Training (shuffled) shares are even, validation's complete.
        self.sampler = EpochSampler(len(x), seed, shuffle, rank=rank, world_size=world_size, even=shuffle)
        self.batch_sampler = None  # looked up next to ``sampler`` by Lightning's loader checks
        self._position = _ResumePosition()

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.block_rows)

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order().to(self.x.device)  # (N,) one small copy per epoch
        first = self._position.start(self.sampler.epoch)
        for start in range(first * self.batch_size, len(order), self.block_rows):
            index = order[start : start + self.block_rows]  # (S*B,)
            self._position.served += math.ceil(len(index) / self.batch_size)
            yield self.x[index], self.y[index]  # (S*B, ...), (S*B, K)

    def state_dict(self) -> dict[str, int]:
        return self._position.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position.restore(state)


class _ResumableLoader(DataLoader[tuple[torch.Tensor, ...]]):
    """A ``DataLoader`` of blocks over an :class:`EpochSampler` that can continue mid-epoch."""

    def __init__(self, *args: Any, mini_batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mini_batch = mini_batch  # rows of one mini-batch; batch_size is a block's
        self._position = _ResumePosition()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.batch_sampler.sampler  # type: ignore[union-attr]
        first = self._position.start(sampler.epoch)
        sampler.skip = first * self.mini_batch
        for block in super().__iter__():
            self._position.served += math.ceil(len(block[0]) / self.mini_batch)
            yield block

    def state_dict(self) -> dict[str, int]:
        return self._position.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position.restore(state)


def streaming_loader(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_workers: int,
    *,
    steps_per_call: int = 1,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A ``DataLoader`` with ``num_workers`` workers and the same blocks as :class:`TensorBatches`."""
    return _ResumableLoader(
        TensorDataset(x, y),
        mini_batch=batch_size,
        batch_size=batch_size * steps_per_call,
        sampler=EpochSampler(len(x), seed, shuffle, rank=rank, world_size=world_size, even=shuffle),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class PoissonBatches:
    """DP-SGD's sampling: each step takes every training row independently with probability
    ``sample_rate`` (Poisson sampling, which the privacy accountant assumes), ``steps_per_call``
    steps to a block.

    An epoch is ``steps_per_epoch`` steps. A block is ``(x, y, sizes)``: the steps' rows one after
    another and each step's row count (Python ints, which Lightning leaves on the host), by which
    the module splits it; a step may hold no row at all (it still adds noise). Each step's draw is
    seeded by ``(seed, epoch, step)``, so a run resumed mid-epoch draws what it would have.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        sample_rate: float,
        steps_per_epoch: int,
        seed: int,
        *,
        steps_per_call: int = 1,
    ) -> None:
        self.x = x  # (N, ...) on the device
        self.y = y  # (N, K) on the device
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.steps_per_call = steps_per_call
        self.sampler = EpochSampler(len(x), seed, shuffle=True)  # Lightning's set_epoch lands here
        self.batch_sampler = None
        self._position = _ResumePosition()

    def __len__(self) -> int:
        return math.ceil(self.steps_per_epoch / self.steps_per_call)

    def step_rows(self, epoch: int, step: int) -> torch.Tensor:
        """The rows step ``step`` of ``epoch`` takes: (M,) int64 on the CPU, M ~ Binomial(N, q)."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + step)
        return torch.nonzero(torch.rand(len(self.x), generator=generator) < self.sample_rate).squeeze(1)

    def __iter__(self) -> Iterator[PrivateBlock]:
        epoch = self.sampler.epoch
        first = self._position.start(epoch)
        for start in range(first, self.steps_per_epoch, self.steps_per_call):
            steps = range(start, min(start + self.steps_per_call, self.steps_per_epoch))
            rows = [self.step_rows(epoch, step) for step in steps]
            index = torch.cat(rows).to(self.x.device)  # (sum of M,)
            self._position.served += len(rows)
            yield self.x[index], self.y[index], tuple(len(r) for r in rows)

    def state_dict(self) -> dict[str, int]:
        return self._position.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position.restore(state)
