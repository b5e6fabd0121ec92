"""One LightningModule for every architecture: loss, metrics and optimiser live here, once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from opacus.optimizers import DPOptimizer
from torch import nn
from torchmetrics import MetricCollection

from components.privacy import dp
from components.training.batches import Batch, PrivateBlock
from components.training.metrics import Accuracy, BatchMean, MacroF1

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")


class Classifier(L.LightningModule):
    """Wraps any of the ``components.models`` networks (input -> logits).

    Targets are one-hot rows (as preprocessing writes them); the loss is cross-entropy against
    them, which equals the usual integer-label loss for one-hot targets and also accepts soft ones.

    **Several optimizer steps per call.** Optimization is manual: each ``training_step`` call gets
    ``steps_per_call`` consecutive mini-batches of the epoch's order as one block of rows and runs
    one forward, backward, clip and Adam step per mini-batch, exactly as one call per mini-batch
    would (same batches, same order, same updates, same weights). What the block saves is
    Lightning's own per-call work (the fit loop's bookkeeping and a dozen hook dispatches over every
    callback), which costs about as much as a small network's whole step on a CPU. Lightning counts
    every optimizer step (``global_step``); the per-call hooks see one call per block.

    **No host sync inside a step.** Metrics (:mod:`components.training.metrics`: loss mean, accuracy,
    macro-F1) are torchmetrics ``Metric`` objects updated on the device once per call and reduced
    once per epoch (and across processes under DDP); none of their updates reads a value back to
    the host. Compute groups are off: merging them compares metric states with ``torch.allclose``,
    a sync. All are logged per epoch.

    ``gradient_clip_val`` clips the gradient norm before every optimizer step (after the unscaling
    of ``16-mixed``). ``channels_last`` keeps the weights and every 4-D input in NHWC layout.

    **DP-SGD** (``privacy``, :mod:`components.privacy.dp`): the network gets per-example gradients,
    the optimizer clips and noises them and an accountant counts every step; a block's steps are
    Poisson-sampled, so it is split by the row counts it carries, and a step without rows still
    adds noise. ``gradient_clip_val`` is not applied (each example is clipped instead). The
    accountant's history and the noise generator's state are part of the checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        learning_rate: float,
        weight_decay: float,
        *,
        batch_size: int,
        gradient_clip_val: float = 0.0,
        channels_last: bool = False,
        privacy: dp.PrivacyPlan | None = None,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # training_step steps the optimizer itself
        self.plain_keys = list(model.state_dict())  # the network's own names, whatever wraps it
        self.privacy = privacy
        self.noise_seed = noise_seed
        self.accountant = dp.new_accountant(privacy) if privacy is not None else None
        self._noise: torch.Generator | None = None  # DP-SGD's noise, made on the training device
        self._noise_state: torch.Tensor | None = None  # restored from a checkpoint, applied at start
        self.model: nn.Module = dp.private_network(model) if privacy is not None else model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size  # rows of one optimizer step; a training block holds several
        self.gradient_clip_val = gradient_clip_val
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": MetricCollection(
                    {
                        "acc": Accuracy(num_classes),
                        "f1_macro": MacroF1(num_classes),
                    },
                    prefix=f"{stage}_",
                    compute_groups=False,
                )
                for stage in STAGES
            }
        )
        self.losses = nn.ModuleDict({f"{stage}_loss": BatchMean() for stage in STAGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), NHWC strides
        return self.model(x)  # (B, ...) -> (B, K) logits

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and logits of one mini-batch, for every stage: ``(loss (), logits (B, K))``."""
        x, y = batch  # (B, ...), (B, K) one-hot
        logits = self(x)  # (B, K)
        return F.cross_entropy(logits, y), logits

    def record(
        self, stage: Stage, loss_sum: torch.Tensor, rows: int, predicted: torch.Tensor, target: torch.Tensor
    ) -> None:
        """Add a call's summed loss over ``rows`` rows and its predicted/target classes (N,) to ``stage``."""
        mean: BatchMean = self.losses[f"{stage}_loss"]  # type: ignore[assignment]
        mean.update(loss_sum, rows)
        metrics: MetricCollection = self.metrics[f"{stage}_metrics"]  # type: ignore[assignment]
        metrics.update(predicted, target)

    def log_epoch(self, stage: Stage) -> None:
        """Log ``<stage>_loss``, ``<stage>_acc`` and ``<stage>_f1_macro`` for the epoch.

        The values are torchmetrics objects: Lightning computes them (reduced across ranks) at the
        epoch's end and resets them. Logging once per epoch instead of every step keeps Lightning's
        per-call logging work (about as long as a small network's whole step on a CPU) out of the loop.
        """
        mean: BatchMean = self.losses[f"{stage}_loss"]  # type: ignore[assignment]
        self.log(f"{stage}_loss", mean, on_step=False, on_epoch=True, prog_bar=True)
        metrics: MetricCollection = self.metrics[f"{stage}_metrics"]  # type: ignore[assignment]
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")

    def training_step(self, batch: Batch | PrivateBlock, batch_idx: int) -> dict[str, torch.Tensor]:
        """One optimizer step per mini-batch of the block; returns the steps' losses ``(S,)``."""
        if len(batch) == 3:
            return self._private_steps(batch)
        x, y = batch  # (S*B, ...), (S*B, K): S consecutive mini-batches (the last may be short)
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer)
        losses, logits = [], []
        for xb, yb in zip(x.split(self.batch_size), y.split(self.batch_size), strict=True):
            # xb (B, ...), yb (B, K)
            loss, step_logits = self.model_step((xb, yb))
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()  # Lightning counts it in global_step; clipped in on_before_optimizer_step
            losses.append(loss.detach())
            logits.append(step_logits.detach())
        # Metrics once per block, not per step: a few device ops for the whole block.
        stacked = torch.stack(losses)  # (S,)
        rows = len(x)
        last = rows - self.batch_size * (len(losses) - 1)  # rows of the last mini-batch
        loss_sum = stacked[:-1].sum() * self.batch_size + stacked[-1] * last  # ()
        self.record("train", loss_sum, rows, torch.cat(logits).argmax(dim=1), y.argmax(dim=1))
        return {"loss": stacked}

    def _private_steps(self, block: PrivateBlock) -> dict[str, torch.Tensor]:
        """DP-SGD over a Poisson block: one noised step per entry of its row counts."""
        x, y, sizes = block  # (M, ...), (M, K), S counts summing to M
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer)
        private = optimizer.optimizer
        assert isinstance(private, DPOptimizer)
        losses, logits = [], []
        for xb, yb in zip(x.split(list(sizes)), y.split(list(sizes)), strict=True):  # (m, ...), (m, K)
            optimizer.zero_grad()
            if len(xb):
                loss, step_logits = self.model_step((xb, yb))
                self.manual_backward(loss)
                logits.append(step_logits.detach())
            else:  # no example drawn: the step is noise alone, and is accounted like any other
                loss = torch.zeros((), device=x.device)
                for p in private.params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            optimizer.step()
            losses.append(loss.detach())
        stacked = torch.stack(losses)  # (S,)
        rows = torch.tensor(sizes, device=x.device, dtype=stacked.dtype)  # (S,)
        if len(x):
            predicted = torch.cat(logits).argmax(dim=1)  # (M,)
            self.record("train", (stacked * rows).sum(), len(x), predicted, y.argmax(dim=1))
        return {"loss": stacked}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the backward and after 16-mixed's unscaling, before the update.
        if self.privacy is None:  # DP-SGD clips each example's gradient instead
            self.clip_gradients_of(optimizer)

    def clip_gradients_of(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm of ``optimizer``'s parameters to ``gradient_clip_val`` (if set)."""
        # The optimizer's own parameter list: self.parameters() would walk every submodule,
        # metrics included, on every step.
        if self.gradient_clip_val:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.gradient_clip_val)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        # The last block, not on_train_epoch_end: callbacks (the epoch history) run before the
        # module's on_train_epoch_end and must already see this epoch's training figures.
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.log_epoch("train")

    def _evaluation_step(self, batch: Batch, stage: Stage) -> torch.Tensor:
        x, y = batch  # (B, ...), (B, K)
        loss, logits = self.model_step(batch)
        self.record(stage, loss.detach() * len(x), len(x), logits.argmax(dim=1), y.argmax(dim=1))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # A fused Adam unscales 16-mixed gradients inside its step, after the clip would have run.
        fused_ok = not str(self.trainer.precision).startswith("16")
        # The network's parameters only: DP-SGD noises every parameter its optimizer holds.
        optimizer = build_optimizer(
            self.model.parameters(), self.learning_rate, self.weight_decay, self.device, fused_ok=fused_ok
        )
        if self.privacy is None or self.accountant is None:
            return optimizer
        self._noise = torch.Generator(device=self.device).manual_seed(self.noise_seed)
        return dp.private_optimizer(optimizer, self.privacy, self.accountant, self._noise)

    def on_train_start(self) -> None:
        if self._noise is not None and self._noise_state is not None:
            self._noise.set_state(self._noise_state)
            self._noise_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.accountant is not None:
            noise = self._noise.get_state() if self._noise is not None else None
            checkpoint["privacy"] = {"history": dp.accountant_state(self.accountant), "noise": noise}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("privacy")
        if self.accountant is not None and saved is not None:
            dp.restore_accountant(self.accountant, saved["history"])
            self._noise_state = saved["noise"]

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights under its own names (without Opacus's wrappers)."""
        return self.plain_weights(self.model.state_dict())

    def plain_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (the wrapped network's keys) under the plain network's names."""
        return dp.plain_weights(state, self.plain_keys) if self.privacy is not None else dict(state)


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    device: torch.device,
    *,
    fused_ok: bool = True,
) -> torch.optim.Optimizer:
    """Adam; on CUDA the fused kernel (one launch for all parameters instead of several per tensor).

    On the CPU it is PyTorch's default implementation, so CPU results stay bit-for-bit as before.
    The benchmark's bare loop builds its optimizer here too, so both sides run the same update.
    """
    fused = True if device.type == "cuda" and fused_ok else None
    return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay, fused=fused)
