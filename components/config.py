"""The ``params.yaml`` schema: the single source of settings and the only place defaults live.

Every stage CLI and every flow loads the *whole* file through :func:`load_params` before it does
anything, so a typo in any section fails every entry point the same way, before a file is written.
Validation is strict: unknown keys, wrong types (no silent ``"5" -> 5`` coercion), out-of-range
values and YAML syntax errors all raise :class:`~components.errors.ParamsError` with the key path
(``train.max_epochs``) and the allowed values in the message.

Overrides (Prefect flow parameters, tests) use dotted key paths, for example
``{"train.max_epochs": 3}``; they are applied to the raw mapping and validated by the same schema,
which is what ``dvc exp run -S train.max_epochs=3`` does to the file.
"""

from __future__ import annotations

import json
import re
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components.errors import ParamsError

DataSource = Literal["digits", "mnist", "fashion_mnist", "kmnist", "idx", "imagefolder", "npz", "text"]
Architecture = Literal["mlp", "cnn", "lstm", "transformer"]
ALL_ARCHITECTURES: tuple[Architecture, ...] = typing.get_args(Architecture)

PositiveInt = Annotated[int, Field(ge=1)]
SKIP_SWEEP_CHECK = "skip_sweep_check"  # validation context: the sweep space is not checked
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy's and Lightning's seeding accept


def is_text_source(source: str) -> bool:
    """Whether ``data.source`` gives token sequences (text) rather than images."""
    return source == "text"


class Section(BaseModel):
    """Base for every section: unknown keys, type coercion and ``.inf``/``.nan`` are errors, values
    are frozen. (An infinite learning rate would train to NaN weights without a single error.)"""

    # The docstring under each field is its description: docs/params.md is generated from them.
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class DataParams(Section):
    """Where the images or texts come from (read by the ``ingest`` stage)."""

    source: DataSource = "digits"
    """Dataset kind: ``digits`` (scikit-learn's bundled 8x8 digits, 1,797 images, no files needed),
    ``mnist``, ``fashion_mnist``, ``kmnist`` (torchvision's files under a local root), ``idx`` (a
    folder of IDX image/label pairs), ``imagefolder`` (one sub-folder of PNG/JPEG images per class)
    or ``npz`` (arrays ``x``/``y``, optional ``x_test``/``y_test``); ``text``: labelled texts in a
    TSV, CSV, JSONL or Parquet file, or a folder of ``train.*``/``test.*`` (docs/text.md). See
    docs/data-sources.md."""
    path: str = "data/source"
    """Folder (or, for ``npz`` and ``text``, file) holding a file-based source's data, relative to
    ``params.yaml`` or absolute; a DVC dependency of ``ingest``; ignored by ``digits``."""
    download: bool = False
    """Let torchvision download ``mnist``/``fashion_mnist``/``kmnist`` into ``path``: the only
    network access the project makes, so off unless asked."""
    num_classes: PositiveInt | None = None
    """Number of classes for ``idx``/``npz``/``text`` labels (0..num_classes-1). ``null``: fixed by
    the source (10 for the digit sets, one per folder for ``imagefolder``, one per class name for
    ``text`` string labels), else max label + 1."""
    text_column: Annotated[str, Field(min_length=1)] = "text"
    """``text`` only: the column (TSV/CSV header, JSONL key, Parquet column) holding the texts."""
    label_column: Annotated[str, Field(min_length=1)] = "label"
    """``text`` only: the column holding the labels (integers 0..K-1, or class names)."""

    @model_validator(mode="after")
    def _columns_differ(self) -> DataParams:
        if self.text_column == self.label_column:
            raise ValueError(f"text_column and label_column must differ (both {self.text_column!r})")
        return self


class TextPreprocessParams(Section):
    """Tokenisation of ``text`` data: a word-level vocabulary fitted on the train split only."""

    vocab_size: Annotated[int, Field(ge=3)] = 1000
    """Largest vocabulary, ``[PAD]`` and ``[UNK]`` included: the most frequent words of the train
    split (ties in alphabetical order); fewer when the train split has fewer distinct words."""
    max_length: PositiveInt = 100
    """Tokens kept per text (the rest is cut off); shorter texts are right-padded with ``[PAD]``."""


class PreprocessParams(Section):
    """How the ingested pool is split, and texts tokenised (read by the ``preprocess`` stage)."""

    seed: Seed = 42
    """Seed of the stratified split; same seed and same input give byte-identical output."""
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    """Share held out for validation (early stopping, model selection): of the source's training
    split when it has a test split of its own, else of the whole pool, like ``test_fraction``;
    unused when the source has a validation split of its own (a ``text`` folder's ``dev.*``)."""
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    """Share of the pool held out for testing, used only when the source has no test split of its
    own (``digits``, a single IDX pair, one image folder, an npz without test arrays)."""
    text: TextPreprocessParams = TextPreprocessParams()
    """Tokenisation (``data.source: text`` only)."""

    @model_validator(mode="after")
    def _fractions_leave_a_training_set(self) -> PreprocessParams:
        total = self.val_fraction + self.test_fraction
        if total >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 so that a training split remains "
                f"(got {self.val_fraction} + {self.test_fraction} = {total:g})"
            )
        return self


Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "64-true"]
MatmulPrecision = Literal["auto", "highest", "high", "medium"]
Strategy = Literal["auto", "ddp"]


PrivacyAccountant = Literal["prv", "rdp"]


class PrivacyParams(Section):
    """Differentially private training (DP-SGD with Opacus; docs/privacy.md)."""

    enabled: bool = False
    """Train with DP-SGD: per-example gradient clipping, Gaussian noise and Poisson sampling, the
    noise calibrated so that the planned steps spend ``target_epsilon``. The registered model name
    gets ``-dp`` (private and non-private models never compete for one ``champion``)."""
    target_epsilon: Annotated[float, Field(gt=0.0)] | None = None
    """Privacy budget ε that ``max_epochs`` epochs spend at most (early stopping spends less;
    the ε actually spent is recorded). Required when ``enabled``."""
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """δ of (ε, δ)-DP; must be below 1 / (training examples). ``null``: the power of ten at or
    below 1 / (10 x training examples) (1e-5 for 8,000 examples)."""
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0
    """Per-example gradient clipping norm C (replaces ``train.gradient_clip_val``, which DP-SGD
    does not apply); the noise's standard deviation is ``noise_multiplier x C``."""
    accountant: PrivacyAccountant = "prv"
    """Privacy accountant: ``prv`` (privacy random variables, tighter) or ``rdp`` (Rényi DP)."""


# Settings DP-SGD cannot honour here, with why (checked when ``train.privacy.enabled``).
_DP_REFUSED_WHY = {
    "in_memory": "Poisson sampling is implemented for the in-memory batches only (set in_memory: true)",
    "compile": "torch.compile does not trace Opacus's per-example gradient hooks (set compile: false)",
    "precision": "per-example clipping and noise are computed in float32 (set precision: auto or 32-true)",
    "num_nodes": "DP-SGD is single-process here (one accountant, one noise draw per step)",
    "devices": "DP-SGD is single-process here (one accountant, one noise draw per step)",
    "strategy": "DP-SGD is single-process here (set strategy: auto)",
}


def dp_refusals(train: TrainParams) -> list[str]:
    """A line per ``train.*`` setting that DP-SGD cannot honour, naming the key; empty when fine."""
    if not train.privacy.enabled:
        return []
    bad = {
        "in_memory": not train.in_memory,
        "compile": train.compile,
        "precision": train.precision not in ("auto", "32-true"),
        "num_nodes": train.num_nodes > 1,
        "devices": train.devices not in ("auto", 1),
        "strategy": train.strategy != "auto",
    }
    lines = [
        f"train.{key}: {json.dumps(getattr(train, key))} is refused with train.privacy.enabled: "
        f"{_DP_REFUSED_WHY[key]}"
        for key, refused in bad.items()
        if refused
    ]
    if train.privacy.target_epsilon is None:
        lines.append("train.privacy.target_epsilon: required when train.privacy.enabled is true")
    return lines


class TrainParams(Section):
    """Training settings shared by every architecture (read by the ``train`` stages)."""

    architectures: Annotated[list[Architecture], Field(min_length=1)] = list(ALL_ARCHITECTURES)
    """Architectures to train, one ``train@``/``evaluate@`` stage pair each, in this order; no
    repeats."""
    seed: Seed = 0
    """Seed of weight initialisation, batch order and dropout."""
    max_epochs: PositiveInt = 40
    """Upper bound on training epochs (early stopping may end sooner)."""
    batch_size: PositiveInt = 128
    """Training batch size per device; the global batch is ``batch_size * devices * num_nodes``."""
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    """Adam learning rate."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """Adam weight decay (L2 penalty)."""
    early_stopping_patience: Annotated[int, Field(ge=0)] = 5
    """Stop after this many epochs without a lower validation loss; 0 turns early stopping off."""
    gradient_clip_val: Annotated[float, Field(ge=0.0)] = 1.0
    """Clip the gradient norm to this value; 0 turns clipping off. Not applied with
    ``privacy.enabled``: DP-SGD clips each example's gradient to ``privacy.max_grad_norm`` instead."""
    accelerator: Accelerator = "auto"
    """Lightning accelerator: ``auto`` takes a GPU when there is one, else the CPU."""
    devices: PositiveInt | Literal["auto"] = "auto"
    """Devices (processes) per node (Lightning ``devices``). Under ``torchrun``/``srun`` it must equal
    the processes started per node; ``auto`` is every GPU of the node, or one CPU process."""
    num_nodes: PositiveInt = 1
    """Nodes taking part (Lightning ``num_nodes``); ``devices * num_nodes`` is the world size
    (docs/cluster.md)."""
    strategy: Strategy = "auto"
    """Lightning strategy: ``auto`` (one device: none; several: DDP) or ``ddp``. Data-parallel only:
    every rank holds the whole model, the global batch is ``batch_size * devices * num_nodes``."""
    precision: Precision = "auto"
    """Lightning precision. ``auto``: ``bf16-mixed`` on a CUDA device that supports bfloat16, else
    ``32-true`` (so the CPU keeps exact fp32 results)."""
    matmul_precision: MatmulPrecision = "auto"
    """``torch.set_float32_matmul_precision`` while training. ``auto``: ``high`` (TF32 tensor cores)
    on CUDA, ``highest`` elsewhere."""
    channels_last: bool | Literal["auto"] = "auto"
    """NHWC memory layout for the ``cnn`` (other architectures have no convolutions and ignore it).
    ``auto``: on for CUDA, where cuDNN's NHWC kernels are faster; off on the CPU."""
    compile: bool = False
    """``torch.compile`` the network before training. Off by default on every device: compiling
    costs tens of seconds per architecture, more than a short run gains; worth it for long GPU runs."""
    in_memory: bool = True
    """Keep the prepared tensors on the training device and slice batches there (no per-sample
    ``DataLoader`` work). ``false`` streams batches through a ``DataLoader`` with workers."""
    num_workers: Annotated[int, Field(ge=0)] = 2
    """``DataLoader`` worker processes when ``in_memory`` is false; ignored otherwise."""
    steps_per_call: PositiveInt = 16
    """Optimizer steps per Lightning ``training_step`` call: each call trains on this many
    consecutive mini-batches, one optimizer step each. The batches, their order and the weights are
    the same for any value; larger values spread Lightning's fixed per-call cost over more steps."""
    checkpoint_every_n_steps: Annotated[int, Field(ge=0)] = 0
    """Also write the resumable checkpoint every N optimizer steps (at the end of the first
    ``training_step`` call that reaches each multiple of N); 0: at the end of each epoch only."""
    privacy: PrivacyParams = PrivacyParams()
    """Differentially private training (DP-SGD)."""

    @model_validator(mode="after")
    def _architectures_unique(self) -> TrainParams:
        duplicates = sorted({a for a in self.architectures if self.architectures.count(a) > 1})
        if duplicates:
            raise ValueError(f"architectures must not repeat (repeated: {', '.join(duplicates)})")
        return self

    @model_validator(mode="after")
    def _private_training_is_possible(self) -> TrainParams:
        problems = dp_refusals(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


class ModelSection(Section):
    """A ``models.<arch>`` section: some keys shape only image models, some only token models."""

    IMAGE_ONLY: ClassVar[frozenset[str]] = frozenset()
    TEXT_ONLY: ClassVar[frozenset[str]] = frozenset()


class MLPParams(ModelSection):
    """``mlp``: flatten (images) or the mean of the token embeddings (text) -> hidden layers (ReLU)
    -> classes."""

    TEXT_ONLY = frozenset({"embedding_dim"})

    hidden_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [256, 128]
    """Width of each hidden layer, input side first."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout after each hidden layer (text: on the bag of embeddings too)."""
    embedding_dim: PositiveInt = 64
    """Text only: width of the token embeddings, whose mean over the real tokens feeds the first
    hidden layer."""


class CNNParams(ModelSection):
    """``cnn``. Images: [conv 3x3 -> ReLU -> max-pool 2] per entry of ``channels`` -> dense ->
    classes. Text (Kim 2014): token embeddings -> parallel 1-D convolutions, one per
    ``kernel_sizes`` entry -> ReLU -> max over time -> dropout -> classes."""

    IMAGE_ONLY = frozenset({"channels", "dense_size", "padding"})
    TEXT_ONLY = frozenset({"embedding_dim", "kernel_sizes", "filters"})

    channels: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64]
    """Images only: output channels of each 3x3 convolution (each followed by ReLU and 2x2
    max-pooling)."""
    padding: Annotated[int, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    """Images only: zero padding of each 3x3 convolution, 0 (valid) or 1 (same). ``auto``: valid
    while every stage keeps at least a 2x2 map (28x28: 28 -> 26 -> 13 -> 11 -> 5), else same (8x8:
    8 -> 4 -> 2); the chosen value is in model.json and the run's ``network.padding``."""
    dense_size: PositiveInt = 64
    """Images only: width of the dense layer before the classifier."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout before the dense layer and before the classifier (text: on the pooled features)."""
    embedding_dim: PositiveInt = 64
    """Text only: width of the token embeddings."""
    kernel_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [3, 4, 5]
    """Text only: width in tokens of each parallel convolution."""
    filters: PositiveInt = 100
    """Text only: output channels of each of those convolutions."""


class LSTMParams(ModelSection):
    """``lstm``: image rows (or embedded tokens) as time steps -> LSTM -> dense -> classes."""

    TEXT_ONLY = frozenset({"embedding_dim"})

    hidden_size: PositiveInt = 64
    """LSTM hidden state width."""
    num_layers: PositiveInt = 1
    """Stacked LSTM layers."""
    dense_size: PositiveInt = 64
    """Width of the dense layer on the last hidden state."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on each time step's input (text: the token embeddings) and on the final hidden state."""
    embedding_dim: PositiveInt = 64
    """Text only: width of the token embeddings (the LSTM's input per step)."""


class TransformerParams(ModelSection):
    """``transformer``: patch (or token) embedding + positions -> encoder -> pooled -> classes.
    Text: padding is masked out of attention and of the mean pool."""

    IMAGE_ONLY = frozenset({"patch_size"})

    patch_size: PositiveInt | Literal["auto"] = "auto"
    """Images only: side of the square image patches (images are zero-padded to a multiple of it).
    ``auto``: half the longer side, a 2x2 grid of patches (8x8: 4; 28x28: 14), the best measured
    (docs/models-and-training.md); the chosen value is in model.json and the run's ``network.patch_size``."""
    d_model: PositiveInt = 64
    """Embedding width (of patches or tokens); divisible by ``num_heads``."""
    num_heads: PositiveInt = 8
    """Attention heads per layer."""
    num_layers: PositiveInt = 2
    """Encoder layers."""
    ff_size: PositiveInt = 512
    """Feed-forward width inside each layer."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Dropout inside each layer."""
    pool: Literal["mean", "cls"] = "mean"
    """Sequence pooling: mean over positions (text: over real tokens), or a learned class token."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


class ModelsParams(Section):
    """Per-architecture sizes. A key marked images only or text only must keep its default when
    ``data.source`` gives the other kind of input (params validation names it otherwise); a text
    model's vocabulary size and sequence length come from the prepared data's tokenizer."""

    mlp: MLPParams = MLPParams()
    cnn: CNNParams = CNNParams()
    lstm: LSTMParams = LSTMParams()
    transformer: TransformerParams = TransformerParams()


def keys_for_other_input(models: ModelsParams, source: str) -> list[str]:
    """A line per ``models.<arch>`` key set away from its default that only the other input kind
    reads (an image-only key with text data, a text-only key with images): a setting that would
    silently change nothing is refused instead."""
    text = is_text_source(source)
    kind, other = ("token sequences", "image") if text else ("images", "text")
    problems = []
    for arch in ALL_ARCHITECTURES:
        section: ModelSection = getattr(models, arch)
        ignored = section.IMAGE_ONLY if text else section.TEXT_ONLY
        for key, field in type(section).model_fields.items():
            if key in ignored and getattr(section, key) != field.default:
                default = json.dumps(field.default)
                problems.append(
                    f"models.{arch}.{key} applies to {other} data only (data.source: {source} gives {kind}); "
                    f"set it back to its default {default} (got {json.dumps(getattr(section, key))})"
                )
    return problems


class EvaluateParams(Section):
    """Evaluation settings (read by the ``evaluate`` stage)."""

    batch_size: PositiveInt = 1024
    """Inference batch size for test metrics and latency."""


CompressMethod = Literal["auto", "dynamic_int8", "static_int8", "prune", "none"]


class CompressParams(Section):
    """Compression settings (read by the ``compress@<arch>`` stage; see docs/compression.md)."""

    method: CompressMethod = "auto"
    """``auto`` (per architecture, from the measurements in docs/compression.md: static int8 for the
    image mlp and cnn, none for the lstm, the transformer and text models), ``dynamic_int8`` (int8
    Linear/LSTM weights, activations quantised per call: a row's class depends on its batch, so it is
    measured but never registered), ``static_int8`` (int8 weights and activations, ranges calibrated
    on training images; image ``mlp`` and ``cnn`` only), ``prune`` (magnitude pruning with a short
    fine-tune) or ``none`` (no compressed model)."""
    prune_amount: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """``prune``: fraction of the Linear/Conv weights set to zero (smallest magnitudes, all layers
    together)."""
    finetune_epochs: Annotated[int, Field(ge=0)] = 1
    """``prune``: epochs of fine-tuning on the training split with the pruned weights held at zero."""
    calibration_batches: PositiveInt = 4
    """``static_int8``: training-split batches of 256 images the activation ranges are measured on."""
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005
    """Largest test-accuracy loss (a fraction: 0.005 = half a point) for the compressed model to be
    accepted and registered."""


class ExplainParams(Section):
    """Attributions and their faithfulness check (read by the ``explain`` stages)."""

    enabled: bool = True
    """Compute attributions; ``false`` still writes a short report saying so (DVC needs the outputs)."""
    samples_per_class: Annotated[int, Field(ge=1, le=10_000)] = 20
    """Test samples per class (a seeded draw) attributed: the class means and the deletion test
    use them; a class with fewer test samples gives all it has."""
    steps: Annotated[int, Field(ge=2, le=4096)] = 64
    """Integration steps of integrated gradients (Gauss-Legendre) for every input; an input whose
    convergence delta stays above ``delta_tolerance`` is integrated again with twice the steps,
    up to ``max_steps``."""
    max_steps: Annotated[int, Field(ge=2, le=4096)] = 1024
    """Most integration steps any input gets (at least ``steps``)."""
    delta_tolerance: Annotated[float, Field(gt=0.0)] = 0.01
    """Largest acceptable |convergence delta| (sum of attributions minus the logit's change from
    the baseline) per input; a larger one after ``max_steps`` is reported as a warning."""
    deletion_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Share of each input's pixels (or real tokens, at least one) the deletion test removes: the
    highest-attributed ones, and separately a random draw of the same size."""
    internal_batch_size: PositiveInt = 4096
    """Rows per forward/backward pass inside integrated gradients (samples x steps are split into
    chunks of this many): bounds memory, not the result."""
    seed: Seed = 0
    """Seed of the sample draw and of the random deletion."""

    @model_validator(mode="after")
    def _max_steps_at_least_steps(self) -> ExplainParams:
        if self.max_steps < self.steps:
            raise ValueError(f"max_steps ({self.max_steps}) must be >= steps ({self.steps})")
        return self


class RegisterParams(Section):
    """Model-registry settings (read by the ``register`` stage)."""

    model_name: str | None = None
    """Registered model name; ``null`` means ``<dataset name>-classifier``, one registered model per
    dataset (``digits-classifier``, ``npz-mydata-classifier``; the dataset name as for
    ``mlflow.experiment_name``)."""
    metric: Literal["test_accuracy", "test_f1_macro"] = "test_accuracy"
    """Metric that decides whether a new version becomes ``champion``."""


class MLflowParams(Section):
    """Tracking settings. The server itself comes from ``MLFLOW_TRACKING_URI``."""

    experiment_name: str | None = None
    """Experiment name; ``null`` means one experiment per dataset, named after it: ``data.source``
    for ``digits``, ``mnist``, ``fashion_mnist`` and ``kmnist``, else ``<data.source>-<name>``, the
    name being ``data.path``'s last part without extension, lower-cased, reduced to ``a-z0-9-``
    (``data/MyData.npz`` -> ``npz-mydata``)."""


class ScheduleParams(Section):
    """When the deployed flow runs (read by ``flows.deploy``, not by any DVC stage)."""

    cron: str = "0 3 * * *"
    """Cron expression of the deployment's schedule (the default: every day at 03:00); nicknames
    such as ``@daily`` too. Checked when params load, by Prefect's rule, so every stage refuses one
    Prefect would refuse."""
    timezone: str = "UTC"
    """IANA time zone the cron expression is read in."""
    deployment_name: Annotated[str, Field(min_length=1)] = "scheduled"
    """Name of the deployment: ``training-pipeline/<deployment_name>`` in Prefect."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        """Prefect's own rule (``prefect.schedules.Cron``), with the croniter release Prefect 3.8
        vendors: a string accepted here is one ``flows.deploy`` can register (``@daily`` included),
        and one Prefect refuses (``0 3 * * 5L``) stops every stage, not only the deployment."""
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(
                f"not a valid cron expression for Prefect: {value!r} (five fields, minute hour "
                "day-of-month month day-of-week, or a nickname such as @daily)"
            )
        if any(field.casefold() in {"r", "h"} for field in value.split()):
            raise ValueError(
                f"not a valid cron expression for Prefect: {value!r} (random R and hashed H unsupported)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


SweepMetric = Literal["val_acc", "val_f1_macro", "val_loss"]


class SpaceRange(Section):
    """A numeric range of a ``sweep.space`` key: an int key draws ints, a float key floats."""

    low: int | float
    """Smallest value (inclusive); within the key's own bounds."""
    high: int | float
    """Largest value (inclusive); within the key's own bounds."""
    log: bool = False
    """Draw on a log scale (``low`` must then be > 0)."""

    @model_validator(mode="after")
    def _ordered(self) -> SpaceRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        return self


class SpaceChoices(Section):
    """Choices of a ``sweep.space`` key: any values the key accepts (lists too)."""

    choices: Annotated[list[Any], Field(min_length=1)]
    """The values to choose from, each valid for the key."""


class SweepParams(Section):
    """Hyperparameter sweep (read by ``flows.sweep``, not by any DVC stage; docs/sweeps.md)."""

    architecture: Architecture = "mlp"
    """Architecture whose settings are searched; space keys are ``train.*`` or
    ``models.<architecture>.*``."""
    n_trials: PositiveInt = 25
    """Trials the study holds when done: finished or pruned ones count, failed ones do not. A rerun
    (or another process on the same study) continues until there are this many."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds after which this process starts no new trial; ``null``: no limit."""
    seed: Seed = 0
    """Seed of the TPE sampler (the trials' training seed is ``train.seed``)."""
    metric: SweepMetric = "val_acc"
    """Validation metric to optimise (maximised, ``val_loss`` minimised), at the epoch whose weights
    training keeps (the lowest validation loss). The test split is never read by a trial."""
    pruning: bool = True
    """Stop unpromising trials early (median pruning on the metric, epoch by epoch)."""
    study_name: Annotated[str, Field(min_length=1)] | None = None
    """Optuna study name; ``null``: ``<dataset name>-<architecture>``. A rerun with the same name
    continues the study."""
    storage: Annotated[str, Field(min_length=1)] | None = None
    """Optuna storage URL (``postgresql://...`` to share a study between machines); ``null``:
    ``OPTUNA_STORAGE`` if set, else ``optuna.db`` beside the MLflow SQLite file."""
    space: dict[str, SpaceRange | SpaceChoices] = {
        "train.learning_rate": SpaceRange(low=1.0e-4, high=1.0e-2, log=True),
        "train.batch_size": SpaceChoices(choices=[32, 64, 128, 256]),
    }
    """Keys to search (dotted, ``train.*`` or ``models.<architecture>.*``), each a range
    ``{low, high, log}`` (numeric keys) or ``{choices: [...]}``; each value must be valid for the key."""


with warnings.catch_warnings():
    # The section name ``register`` is public; it shadows ``BaseModel.register`` (an ABC class
    # method nobody calls on params), which pydantic warns about.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(Section):
        """The whole ``params.yaml``."""

        data: DataParams = DataParams()
        preprocess: PreprocessParams = PreprocessParams()
        train: TrainParams = TrainParams()
        models: ModelsParams = ModelsParams()
        evaluate: EvaluateParams = EvaluateParams()
        register: RegisterParams = RegisterParams()
        compress: CompressParams = CompressParams()
        explain: ExplainParams = ExplainParams()
        sweep: SweepParams = SweepParams()
        mlflow: MLflowParams = MLflowParams()
        schedule: ScheduleParams = ScheduleParams()

        @model_validator(mode="after")
        def _model_keys_fit_the_input(self) -> Params:
            problems = keys_for_other_input(self.models, self.data.source)
            if problems:
                raise ValueError("\n  ".join(problems))
            return self

        @model_validator(mode="after")
        def _sweep_space_fits(self, info: ValidationInfo) -> Params:
            # Each key's values are checked by building Params with them, without this check again.
            if (info.context or {}).get(SKIP_SWEEP_CHECK):
                return self
            problems = space_problems(self)
            if problems:
                raise ValueError("\n  ".join(problems))
            return self


# The sweep space's check lives here, not in components/sweep: every stage validates params.yaml,
# so every stage runs it (and DVC lists this file, not the sweep package, among their deps).


def current_value(params: Params, key: str) -> tuple[bool, Any]:
    """(found, value) of the dotted ``key`` in ``params``; not found when a part is not a field."""
    node: Any = params
    for part in key.split("."):
        fields = getattr(type(node), "model_fields", None)
        if fields is None or part not in fields:
            return False, None
        node = getattr(node, part)
    return not hasattr(type(node), "model_fields"), node  # a whole section is not a key


def with_values(params: Params, values: dict[str, Any], source: str) -> Params:
    """``params`` with dotted-key ``values`` set, validated by the schema (sweep space unchecked)."""
    raw = apply_overrides(params.model_dump(mode="json"), values)
    return validate_params(raw, source=source, check_sweep=False)


def _value_problem(params: Params, key: str, value: Any) -> str | None:
    try:
        with_values(params, {key: value}, source="sweep")
    except ParamsError as exc:
        lines = str(exc).splitlines()[1:]  # the schema's lines, without the "invalid settings" header
        reasons = [line.strip() for line in lines if line.strip().startswith(key)] or [
            line.strip() for line in lines
        ]
        return "; ".join(reasons)
    return None


def _range_problems(params: Params, key: str, value: Any, spec: SpaceRange) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        held = json.dumps(value)
        return [f"sweep.space.{key}: a range needs a numeric key (it holds {held}); give choices"]
    if isinstance(value, int) and not (isinstance(spec.low, int) and isinstance(spec.high, int)):
        return [f"sweep.space.{key}: an integer key needs integer low and high (got {spec.low}, {spec.high})"]
    problems = []
    for end, bound in (("low", spec.low), ("high", spec.high)):
        checked = float(bound) if isinstance(value, float) else bound
        problem = _value_problem(params, key, checked)
        if problem:
            problems.append(f"sweep.space.{key}: {end} {bound} is outside the key's own bounds ({problem})")
    return problems


def _choice_problems(params: Params, key: str, spec: SpaceChoices) -> list[str]:
    encoded = [json.dumps(choice) for choice in spec.choices]
    if len(set(encoded)) < len(encoded):
        return [f"sweep.space.{key}: choices repeat a value ({', '.join(encoded)})"]
    problems = []
    for choice in spec.choices:
        problem = _value_problem(params, key, choice)
        if problem:
            problems.append(f"sweep.space.{key}: choice {json.dumps(choice)} is refused ({problem})")
    return problems


def space_problems(params: Params) -> list[str]:
    """One line per refused ``sweep.space`` key, naming it: unknown, outside ``train.*`` and
    ``models.<sweep.architecture>.*``, a range on a non-numeric key or beyond the key's bounds, or a
    choice the key refuses."""
    arch = params.sweep.architecture
    allowed = ("train.", f"models.{arch}.")
    problems = []
    for key, spec in params.sweep.space.items():
        if key == "train.architectures" or not key.startswith(allowed):
            problems.append(
                f"sweep.space.{key}: only train.* (not train.architectures) and models.{arch}.* keys "
                f"can be searched (sweep.architecture: {arch})"
            )
            continue
        found, value = current_value(params, key)
        if not found:
            problems.append(f"sweep.space.{key}: unknown key (see docs/params.md)")
        elif isinstance(spec, SpaceRange):
            problems.extend(_range_problems(params, key, value, spec))
        else:
            problems.extend(_choice_problems(params, key, spec))
    return problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)
    and reads floats as YAML 1.2 does, like DVC: PyYAML (YAML 1.1) reads ``1e-3``, with no dot,
    as the string ``"1e-3"``, which the strict schema then refuses as "not a valid number"."""


# YAML 1.2 core-schema floats not already floats in YAML 1.1: an exponent without a dot (1e-3, 5E+2).
_YAML_1_2_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _YAML_1_2_EXPONENT_FLOAT, list("-+0123456789")
)


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str) -> Any:
    """``text`` as params.yaml is read (safe, no key twice, YAML 1.2 floats): e.g. a ``--set`` value."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot be read ({exc})") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: YAML syntax error: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path}: the top level must be a mapping of sections "
            f"({', '.join(Params.model_fields)}), got {type(raw).__name__}"
        )
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-path overrides (``"train.max_epochs": 3``) set."""
    result: dict[str, Any] = _deep_copy_mapping(raw)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                prefix = ".".join(keys[: i + 1])
                raise ParamsError(f"override {dotted}: {prefix} is not a section")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy_mapping(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_mapping(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The schema model reached by following ``loc`` from :class:`Params` (None if not a model)."""
    model: type[BaseModel] = Params
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: Mapping[str, Any]) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    if not loc and error["type"] == "value_error":  # a whole-file rule: its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(part) for part in loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "see docs/params.md"
        return f"{key}: unknown key (allowed keys here: {allowed})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in {"model_type", "model_attributes_type", "dict_type"}:
        parent = _model_at(loc)
        if parent is not None:
            message = f"must be a mapping with keys {', '.join(parent.model_fields)}"
    got = error.get("input")
    if error["type"] not in {"missing"} and not isinstance(got, dict):
        shown = repr(got)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return f"{key}: {message}"


def validate_params(raw: Mapping[str, Any], source: str = "params", *, check_sweep: bool = True) -> Params:
    """Validate a raw mapping against the schema; raise :class:`ParamsError` listing every error.
    ``check_sweep=False`` skips the sweep space's check (which validates Params per space value)."""
    try:
        return Params.model_validate(dict(raw), context={SKIP_SWEEP_CHECK: not check_sweep})
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError(f"{source}: invalid settings:\n  " + "\n  ".join(lines)) from None


def dump_params(params: Params, path: Path | str) -> Path:
    """Write ``params`` as a complete params file (atomically), e.g. a flow run's effective settings."""
    from components.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return Path(path)


def load_params(path: Path | str = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Params:
    """Read, override and validate ``params.yaml``. Raises :class:`ParamsError`, never writes."""
    path = Path(path)
    raw = _read_yaml(path)
    if not overrides:
        return validate_params(raw, source=str(path))
    source = f"{path} (overridden: {', '.join(overrides)})"
    return validate_params(apply_overrides(raw, overrides), source=source)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": "0"}`` (lists as their Python repr)."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def key_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.max_epochs=3", ...]`` from ``--set`` options: dotted key to its YAML value.

    A pair without ``=`` is refused rather than read as ``key: null`` (which a nullable key would
    accept silently); the values are then checked by the params schema like any other setting.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {pair!r}: expected KEY=VALUE (a YAML value; KEY=null for null)")
        try:
            overrides[key.strip()] = parse_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ParamsError(f"--set {pair!r}: the value is not valid YAML ({problem})") from None
    return overrides


def effective_params(
    params_file: Path,
    architectures: list[str] | None,
    max_epochs: int | None,
    data_source: str | None,
    overrides: dict[str, Any] | None,
) -> Params:
    """``params_file`` with the flow parameters applied, validated by the same schema as the stages.

    ``train.num_nodes`` > 1 is refused here, before anything runs: one flow run starts processes on
    its own machine only, and the other nodes' processes must be started there (SLURM, Kubernetes).
    """
    chosen: dict[str, Any] = dict(overrides or {})
    for key, value in (
        ("train.architectures", architectures),
        ("train.max_epochs", max_epochs),
        ("data.source", data_source),
    ):
        if value is not None:
            chosen[key] = value
    params = load_params(params_file, chosen)
    if params.train.num_nodes > 1:
        raise ParamsError(
            f"train.num_nodes: {params.train.num_nodes}: the flow trains on its own machine only; start "
            "the train stage on every node (infra/slurm/train.sbatch, infra/k8s/train-job.yaml, or "
            "torchrun with a rendezvous: docs/cluster.md) and run the flow with "
            "train.num_nodes: 1"
        )
    return params
