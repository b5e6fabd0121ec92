"""DP-SGD wired by hand into the project's one LightningModule (what ``PrivacyEngine.make_private``
does, in pieces): the noise plan, the private network, the optimizer and the accountant.

- :func:`plan_privacy`: sampling rate q = 1 / steps per epoch (as Opacus derives it from a
  loader's length), δ, and the noise multiplier that spends ``target_epsilon`` over the planned
  ``max_epochs`` epochs (``opacus.accountants.utils.get_noise_multiplier``).
- :func:`private_network`: the network wrapped in Opacus's ``GradSampleModule`` (per-example
  gradients). ``nn.LSTM`` becomes Opacus's ``DPLSTM`` (same weights, and its ``state_dict`` keeps
  the ``nn.LSTM`` names beside its own); the transformer's encoder has no Opacus grad sampler and
  is differentiated per example with ``torch.func`` over the whole network.
- :func:`private_optimizer`: Adam inside Opacus's ``DPOptimizer`` (clip each example's gradient
  to C, sum, add N(0, (sigma C)^2), divide by the expected batch q·N), the accountant on its step hook.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from components.config import Params, PrivacyParams, is_text_source
from components.errors import ParamsError

GSM_PREFIX = "_module."  # GradSampleModule's prefix on the wrapped network's state_dict keys


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD settings of one training, resolved against the training split."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str  # "prv" | "rdp"
    train_examples: int  # N
    steps_per_epoch: int  # ceil(N / batch_size): an epoch keeps the non-private step count
    sample_rate: float  # q = 1 / steps_per_epoch: each example's chance to be in a step
    planned_steps: int  # max_epochs * steps_per_epoch
    noise_multiplier: float  # sigma: the noise's std is sigma * max_grad_norm

    @property
    def expected_batch_size(self) -> float:
        """q·N, the mean rows of a Poisson-sampled step (the gradient's divisor)."""
        return self.sample_rate * self.train_examples


def default_delta(n: int) -> float:
    """The power of ten at or below 1 / (10 n): 1e-5 for n = 8,000, 1e-5 for n = 1,257."""
    return 10.0 ** math.floor(math.log10(1.0 / (10 * n)))


def plan_privacy(settings: PrivacyParams, n: int, batch_size: int, max_epochs: int) -> PrivacyPlan:
    """Resolve ``train.privacy`` for a training split of ``n`` examples; refuse what cannot hold
    (δ ≥ 1/N, a batch larger than the split, an ε no noise reaches), naming the key."""
    assert settings.target_epsilon is not None  # the params schema requires it when enabled
    delta = settings.delta if settings.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        raise ParamsError(
            f"train.privacy.delta: {delta:g} must be below 1 / {n} training examples ({1.0 / n:.3g}): "
            "a δ that large lets the mechanism publish an example outright"
        )
    if batch_size >= n:
        raise ParamsError(
            f"train.batch_size: {batch_size} is not below the {n} training examples: Poisson sampling "
            "would take every example in every step, with no privacy amplification"
        )
    steps_per_epoch = math.ceil(n / batch_size)
    sample_rate = 1.0 / steps_per_epoch
    planned = max_epochs * steps_per_epoch
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PRV's "optimal order is the largest alpha" chatter
            sigma = get_noise_multiplier(
                target_epsilon=settings.target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=planned,
                accountant=settings.accountant,
            )
    except ValueError as exc:
        raise ParamsError(
            f"train.privacy.target_epsilon: {settings.target_epsilon:g} cannot be reached with "
            f"δ {delta:g}, q {sample_rate:.4g} and {planned} steps ({exc})"
        ) from None
    return PrivacyPlan(
        settings.target_epsilon, delta, settings.max_grad_norm, settings.accountant, n,
        steps_per_epoch, sample_rate, planned, float(sigma),
    )  # fmt: skip


def private_network(network: nn.Module) -> GradSampleModule:
    """``network`` with per-example gradients. Layers Opacus must replace (``nn.LSTM`` -> ``DPLSTM``)
    are replaced, weights copied. Wrapped in eval mode: a module Opacus differentiates with
    ``torch.func`` (the transformer) is copied now, and its per-example pass then runs without
    dropout (random masks cannot be replayed per example); it stays a function of that example only."""
    for name, child in list(network.named_children()):
        if isinstance(child, nn.LSTM):
            setattr(network, name, ModuleValidator.fix(child))
    # Opacus's hooks fire on the first layer too, whose input needs no gradient: expected here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    was_training = network.training
    network.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using a non-full backward hook" and similar
        wrapped = GradSampleModule(network, strict=False)
    network.train(was_training)
    return wrapped


def plain_weights(state: Mapping[str, torch.Tensor], plain_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The network's weights under their ``nn.Module`` names: ``GradSampleModule``'s prefix stripped,
    ``DPLSTM``'s own names (``lstm.l0.ih.weight``) dropped for the ``nn.LSTM`` ones it also keeps."""
    keys = list(plain_keys)
    stripped = {k.removeprefix(GSM_PREFIX): v for k, v in state.items()}
    missing = [k for k in keys if k not in stripped]
    if missing:
        raise KeyError(f"the private network's weights lack {', '.join(missing[:3])}")
    return {k: stripped[k] for k in keys}


def private_optimizer(
    optimizer: torch.optim.Optimizer, plan: PrivacyPlan, accountant: IAccountant, generator: torch.Generator
) -> DPOptimizer:
    """``optimizer`` as DP-SGD; every step is counted by ``accountant`` (q, sigma)."""
    dp = DPOptimizer(
        optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch_size,  # a float: q*N need not be whole
        loss_reduction="mean",
        generator=generator,
    )
    dp.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    return dp


def new_accountant(plan: PrivacyPlan) -> IAccountant:
    return create_accountant(mechanism=plan.accountant)


def spent_epsilon(accountant: IAccountant, delta: float) -> float:
    """ε spent by every step the accountant counted; 0 before the first."""
    if not accountant.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


def accountant_state(accountant: IAccountant) -> list[list[float]]:
    """The accountant's history ``[[sigma, q, steps], ...]``: plain numbers, for a tensors-only checkpoint."""
    return [[float(s), float(q), int(n)] for s, q, n in accountant.history]


def restore_accountant(accountant: IAccountant, history: Iterable[Iterable[float]]) -> None:
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]


def accounted_steps(accountant: IAccountant) -> int:
    return sum(int(n) for _, _, n in accountant.history)


def privacy_record(plan: PrivacyPlan, accountant: IAccountant) -> dict[str, Any]:
    """What ``train_info.json`` records: the plan, the steps counted and the ε they spent."""
    record = asdict(plan)
    record.update(
        epsilon=spent_epsilon(accountant, plan.delta),
        steps=accounted_steps(accountant),
        expected_batch_size=plan.expected_batch_size,
    )
    return record


def plan_for(params: Params, arch: str, n_train: int) -> PrivacyPlan | None:
    """``train.privacy`` resolved for ``n_train`` examples, or None without DP; refuses the text
    transformer (see docs/privacy.md)."""
    settings = params.train.privacy
    if not settings.enabled:
        return None
    if arch == "transformer" and is_text_source(params.data.source):
        raise ParamsError(
            "train.privacy.enabled: the text transformer cannot train with DP-SGD: its encoder has no "
            "Opacus per-example gradient rule, so Opacus differentiates it per example with torch.func "
            "vmap, which cannot trace the padding trimmed per batch (a data-dependent shape); "
            "drop transformer from train.architectures or train it without privacy"
        )
    return plan_privacy(settings, n_train, params.train.batch_size, params.train.max_epochs)
