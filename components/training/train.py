"""Train one architecture on the prepared data: the function behind ``train@<arch>`` (and the flow).

Resumable: checkpoints go to ``<work_root>/train/<arch>-<fingerprint>/`` (the fingerprint covers the
data version, the architecture and every setting that changes the result), outside DVC's outputs
because DVC deletes a stage's outputs before re-running it. A run killed part-way and started again
with the same data and settings continues from the last checkpoint (mid-epoch included) and reopens
the same MLflow run. The work folder is removed once the output folder is in place.

Output: ``models/<arch>/`` (see :mod:`components.training.artifacts`), written atomically; the
weights are those of the epoch with the lowest validation loss.

Multi-process (DDP): the same function runs in every process, started by ``torchrun``, SLURM
``srun`` or Lightning's own ``ddp`` launcher (see :mod:`components.training.launch`). Every rank
trains on its share of each epoch; only global rank zero opens and logs the MLflow run, writes the
checkpoints (Lightning saves on rank zero) and the output folder, and removes the work folder. The
other ranks return a :class:`TrainResult` with ``global_rank`` > 0 and an empty ``run_id``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from mlflow.entities import DatasetInput

from components.atomic import atomic_directory, atomic_write_json, dumps_json
from components.code_version import code_tags
from components.config import Architecture, Params, flatten
from components.data.manifest import TOKENIZER
from components.data.normalize import Normalization
from components.data.prepared import data_version, load_prepared, require_split
from components.data.text_stats import TextStats
from components.errors import ParamsError
from components.hashing import sha256_bytes
from components.models import build_model, config_to_dict, model_config
from components.naming import experiment_name
from components.privacy.dp import PrivacyPlan, plan_for
from components.tracking import TrackedRun, Tracker, pipeline_key
from components.tracking_datasets import split_inputs
from components.training.artifacts import WEIGHTS, write_model_folder
from components.training.data import ClassificationData
from components.training.fitting import checked_weights, make_fit, run_fit
from components.training.info import log_privacy, mlflow_record, train_info
from components.training.module import Classifier
from components.training.preemption import sigterm_raises
from components.training.speed import check_accelerator, resolve_speed
from components.training.work_lock import finished_meanwhile, one_training_at_a_time, record_reuse
from components.training.world_size import check_launched_world_size, processes_per_node

RUN_FILE = "mlflow_run.json"
# Settings that change how fast training runs but not what it computes (beyond rounding). A run
# resumes only from a checkpoint of the same fingerprint. (``steps_per_call`` changes nothing that
# is computed either, but a checkpoint counts the training_step calls of the epoch so far, which is
# only meaningful for the same block size.)
_SPEED_ONLY = {
    "architectures",
    "num_workers",
    "in_memory",
    "checkpoint_every_n_steps",
    "strategy",
    "channels_last",
    "compile",
}


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path  # written by global rank zero only
    run_id: str  # the MLflow run; "" on the other ranks
    info: dict[str, Any]
    global_rank: int = 0


def fingerprint(params: Params, arch: Architecture, version: str) -> str:
    """Key of a training run: data version, architecture and the settings that shape the weights.

    ``precision: auto`` and ``devices: auto`` enter resolved (``bf16-mixed`` on a GPU, the GPU
    count), so a run is never resumed from a checkpoint trained at another precision, or by another
    number of processes (its position in the epoch counts each rank's shard).
    """
    train = params.train.model_dump(exclude=_SPEED_ONLY)
    train["precision"] = resolve_speed(params.train, arch).precision
    train["devices"] = processes_per_node(params.train)
    payload = {
        "data_version": version,
        "architecture": arch,
        "train": train,
        "model": getattr(params.models, arch).model_dump(),
    }
    return sha256_bytes(dumps_json(payload).encode())


def run_params(params: Params, arch: Architecture) -> dict[str, str]:
    """Every setting that applies to ``arch``'s run, flattened for MLflow."""
    return flatten(
        {
            "data": params.data.model_dump(),
            "preprocess": params.preprocess.model_dump(),
            "train": params.train.model_dump(),
            "models": {arch: getattr(params.models, arch).model_dump()},
            "evaluate": params.evaluate.model_dump(),
        }
    )


def _previous_run_id(work_dir: Path) -> str | None:
    try:
        return str(json.loads((work_dir / RUN_FILE).read_text(encoding="utf-8"))["run_id"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class Build:
    """Everything a training needs before it fits: the data, the network and where it resumes."""

    version: str  # the prepared data's version
    key: str  # the fingerprint (see fingerprint)
    work_dir: Path  # <work_root>/train/<arch>-<key[:16]>: checkpoints and the run id
    config: Any  # the network's config dataclass
    network: torch.nn.Module
    module: Classifier
    data: ClassificationData
    stats: Normalization | TextStats  # the train split's normalisation, or the text's vocabulary
    tokenizer: Path | None  # text: the prepared data's tokenizer.json, which travels with the model
    inputs: list[DatasetInput]  # the train and val splits as MLflow dataset inputs (tracking_datasets)
    privacy: PrivacyPlan | None = None  # DP-SGD's resolved settings; None without privacy


def build(params: Params, arch: Architecture, prepared_dir: Path, work_root: Path) -> Build:
    """Read the prepared splits and build the seeded network, its LightningModule and the batches."""
    prepared = load_prepared(prepared_dir, only=("train", "val"))  # never the test split
    for split in ("train", "val"):
        require_split(prepared, split, prepared_dir)
    version = data_version(prepared_dir)
    stats = prepared.stats
    plan = plan_for(params, arch, len(prepared.splits["train"].x))  # before any side effect
    try:
        vocab = stats.vocab_size if isinstance(stats, TextStats) else None
        config = model_config(
            arch, params.models, stats.input_shape, len(stats.class_names), vocab_size=vocab
        )
    except ValueError as exc:  # a setting that does not fit the data (names its models.<arch> key)
        raise ParamsError(str(exc)) from None
    key = fingerprint(params, arch, version)
    speed = resolve_speed(params.train, arch)
    L.seed_everything(params.train.seed, workers=True, verbose=False)
    network = build_model(arch, config)
    if speed.compile:
        network.compile()  # in place: state_dict keys stay those of the plain network
    module = Classifier(
        network,
        len(stats.class_names),
        params.train.learning_rate,
        params.train.weight_decay,
        batch_size=params.train.batch_size,
        gradient_clip_val=params.train.gradient_clip_val,
        channels_last=speed.channels_last,
        privacy=plan,
        noise_seed=params.train.seed,
    )
    train_split, val_split = prepared.splits["train"], prepared.splits["val"]
    poisson = (plan.sample_rate, plan.steps_per_epoch) if plan is not None else None
    data = ClassificationData(
        (train_split.x, train_split.y),
        (val_split.x, val_split.y),
        params.train,
        params.evaluate.batch_size,
        poisson=poisson,
    )
    work_dir = work_root / "train" / f"{arch}-{key[:16]}"
    inputs = split_inputs(params, prepared, prepared_dir, version, ("train", "val"))
    tokenizer = prepared_dir / TOKENIZER if isinstance(stats, TextStats) else None
    return Build(version, key, work_dir, config, network, module, data, stats, tokenizer, inputs, plan)


def open_child_run(
    stack: contextlib.ExitStack,
    tracker: Tracker,
    params: Params,
    arch: Architecture,
    built: Build,
    code: Mapping[str, str],
    tags: Mapping[str, str],
    parent_run_id: str | None,
) -> tuple[TrackedRun, str]:
    """The architecture's MLflow run under its pipeline's parent (reopened after a crash); with
    every setting logged. Returns the run and the parent's id."""
    run_tags = {
        "architecture": arch,
        "data.source": params.data.source,
        "data.version": built.version,
        **code,
        "train.fingerprint": built.key,
        **tags,
    }
    run_level = {"architecture", "train.fingerprint"}
    parent = tracker.parent_run(
        pipeline_key(params, built.version, code["git.commit"]),
        {k: v for k, v in run_tags.items() if k not in run_level},
        given=parent_run_id,
    )
    previous = _previous_run_id(built.work_dir)
    run = stack.enter_context(tracker.child_run(parent, arch, run_tags, resume_run_id=previous))
    built.work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(built.work_dir / RUN_FILE, {"run_id": run.run_id})
    run.log_params(run_params(params, arch))
    run.log_params({f"network.{key}": str(value) for key, value in config_to_dict(built.config).items()})
    run.log_inputs(built.inputs)
    return run, parent


def record(
    run: TrackedRun,
    arch: Architecture,
    built: Build,
    weights: dict[str, torch.Tensor],
    info: dict[str, Any],
    out_dir: Path,
) -> None:
    """Write the model folder atomically, log its size and files to the run, drop the checkpoints."""
    with atomic_directory(out_dir) as tmp:
        write_model_folder(tmp, arch, built.config, weights, built.stats, info, tokenizer=built.tokenizer)
    size = {
        "model_parameters": float(info["parameters"]),
        "model_bytes": float((out_dir / WEIGHTS).stat().st_size),
    }
    run.log_metrics(size)
    run.log_artifacts(out_dir, "model_files")
    shutil.rmtree(built.work_dir, ignore_errors=True)  # while the caller holds the training lock


def train(
    params: Params,
    arch: Architecture,
    prepared_dir: Path | str,
    out_dir: Path | str,
    *,
    work_root: Path | str = ".work",
    project_root: Path | str = ".",
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    progress_bar: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``arch``, write ``out_dir`` atomically, record the run in MLflow; return what was made.

    Build, fit, record. Under DDP every rank calls this; only global rank zero writes anything or
    talks to MLflow. ``parent_run_id``: the MLflow parent run (a flow's); by default
    ``PIPELINE_PARENT_RUN_ID`` or the pipeline run found by its key. ``progress_bar``: a live bar
    (default: when stderr is a terminal) or one line per epoch.
    """
    check_launched_world_size(params.train)
    check_accelerator(params.train.accelerator)
    out_dir, project_root = Path(out_dir), Path(project_root)
    built = build(params, arch, Path(prepared_dir), Path(work_root))
    interactive = sys.stderr.isatty() if progress_bar is None else progress_bar
    fit = make_fit(params, arch, built, callbacks, interactive)
    # Known before fit under torchrun/srun (from their environment) and in the processes
    # Lightning's ddp launcher starts (it sets LOCAL_RANK); the launching process is rank zero.
    if not fit.trainer.is_global_zero:
        with sigterm_raises(f"train@{arch}: stopped by SIGTERM outside the training loop"):
            run_fit(fit, built, params, arch, None)
        return TrainResult(out_dir, "", {"architecture": arch}, global_rank=fit.trainer.global_rank)

    with contextlib.ExitStack() as stack:
        outside = f"train@{arch}: stopped by SIGTERM outside the training loop; {out_dir} is unchanged"
        stack.enter_context(sigterm_raises(f"{outside}; run the same command again to resume"))
        # One training of these settings at a time; one that waited reuses what the other wrote.
        waited = stack.enter_context(one_training_at_a_time(Path(work_root), arch, built.key))
        single = fit.trainer.num_devices * fit.trainer.num_nodes == 1  # other ranks could not skip fit
        earlier = finished_meanwhile(out_dir, built.key, built.version) if waited and single else None
        code = code_tags(project_root)
        tracker = Tracker.open(experiment_name(params), project_root)
        if earlier is not None:
            found = tracker.existing_parent(
                pipeline_key(params, built.version, code["git.commit"]), parent_run_id
            )
            return TrainResult(out_dir, record_reuse(tracker, found, arch, out_dir, earlier), earlier)
        run, parent = open_child_run(stack, tracker, params, arch, built, code, tags or {}, parent_run_id)
        fit.history.sink = run.log_metrics
        if run.resumed:  # epochs a killed process queued for MLflow but never sent
            fit.history.backfill = run.log_missing_epochs
        run_fit(fit, built, params, arch, run)
        weights = checked_weights(fit, built, params, arch, out_dir)
        where = mlflow_record(tracker, run.run_id, parent)
        info = train_info(params, arch, built, fit, weights, code, where).to_json()
        if info["privacy"] is not None:
            log_privacy(run, info["privacy"])
        record(run, arch, built, weights, info, out_dir)
    return TrainResult(out_dir, run.run_id, info, global_rank=fit.trainer.global_rank)
