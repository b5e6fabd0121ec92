"""The prepared splits as a ``LightningDataModule``, in memory on the device or streamed."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from components.config import TrainParams
from components.errors import DataValidationError
from components.training.batches import Batch, PoissonBatches, PrivateBlock, TensorBatches, streaming_loader

Loader = TensorBatches | DataLoader[tuple[torch.Tensor, ...]]


class ClassificationData(L.LightningDataModule):
    """Train and validation splits (normalised images, one-hot targets).

    With ``train.in_memory`` the tensors are moved once, in :meth:`setup`, to the device Lightning
    chose, and every batch is gathered there; otherwise a ``DataLoader`` with workers streams them.
    Under DDP each rank gets its own slice of every epoch (see :mod:`components.training.batches`).
    With ``poisson`` (DP-SGD) training steps are Poisson-sampled instead (:class:`PoissonBatches`).
    """

    def __init__(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        params: TrainParams,
        eval_batch_size: int,
        *,
        poisson: tuple[float, int] | None = None,
    ) -> None:
        super().__init__()
        self._arrays = {"train": train, "val": val}
        self.params = params
        self.eval_batch_size = eval_batch_size
        self.poisson = poisson  # DP-SGD: (sample rate, steps per epoch) of Poisson-sampled steps
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer and self.params.in_memory else None
        for name, (x, y) in self._arrays.items():
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)  # (N, C, H, W), (N, K)
            self._tensors[name] = (xt.to(device), yt.to(device)) if device else (xt, yt)

    def _loader(self, name: str, batch_size: int, shuffle: bool, steps_per_call: int = 1) -> Loader:
        """Blocks of ``steps_per_call`` batches of this rank's share of split ``name`` (training: equal
        shares; validation: all)."""
        x, y = self._tensors[name]
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if len(x) < world_size:
            raise DataValidationError(
                f"the {name} split", f"has {len(x)} samples, fewer than the {world_size} training processes"
            )
        seed = self.params.seed
        shard = {"steps_per_call": steps_per_call, "rank": rank, "world_size": world_size}
        if self.params.in_memory:
            return TensorBatches(x, y, batch_size, seed, shuffle, **shard)
        return streaming_loader(x, y, batch_size, seed, shuffle, self.params.num_workers, **shard)

    def train_dataloader(self) -> Iterable[Batch] | Iterable[PrivateBlock]:
        params = self.params
        if self.poisson is not None:  # in memory, one process: the params schema refuses the rest
            x, y = self._tensors["train"]
            rate, steps = self.poisson
            return PoissonBatches(x, y, rate, steps, params.seed, steps_per_call=params.steps_per_call)
        return self._loader("train", params.batch_size, shuffle=True, steps_per_call=params.steps_per_call)

    def val_dataloader(self) -> Iterable[Batch]:
        return self._loader("val", self.eval_batch_size, shuffle=False)
