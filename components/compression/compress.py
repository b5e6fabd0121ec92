"""Compress one trained architecture: the function behind ``compress@<arch>`` (DVC stage and flow task).

Reads ``models/<arch>/`` and the prepared data; writes ``models/<arch>-compressed/``
(:mod:`components.compression.folder`) and ``reports/<arch>/compression.json``: the method, the
before and after figures on the same test split (:mod:`components.compression.figures`), whether
the compressed model is accepted (it loses at most ``compress.max_accuracy_drop`` test accuracy)
and why. The same figures go to the architecture's MLflow run, as the evaluation's do. Runs on the
CPU (int8 kernels are CPU kernels), on the process's threads setting, recorded in the report.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from components.atomic import atomic_directory, atomic_write_json
from components.code_version import code_tags
from components.compression.codec import quantise, quantised_engine, to_tensors
from components.compression.figures import LARGE_BATCH, model_figures, stored_figures
from components.compression.folder import write_compressed, write_marker
from components.compression.prune import prune_and_finetune
from components.config import Architecture, Params
from components.data.prepared import PreparedSplit, load_prepared, require_split
from components.errors import ParamsError
from components.naming import experiment_name
from components.tracking import Tracker, pipeline_key
from components.training.artifacts import TrainedModel, check_same_data, load_trained_model

# What ``compress.method: auto`` picks, from the single-thread CPU measurements in docs/compression.md:
# static int8 (calibrated activation ranges) for the image mlp and cnn; none where only dynamic int8
# applies (lstm, transformer, token models): its per-call activation scale makes a row's class
# depend on the rows predicted with it, and it brought no real speed-up there.
AUTO: dict[str, str] = {
    "mlp": "static_int8",
    "cnn": "static_int8",
    "lstm": "none",
    "transformer": "none",
}
AUTO_TEXT: dict[str, str] = dict.fromkeys(AUTO, "none")  # token ids cannot enter a QuantStub
STATIC_ARCHITECTURES = ("mlp", "cnn")  # image models whose layers all have static int8 kernels
BATCH_DEPENDENT = (
    "compress.method dynamic_int8 quantises the activations with one scale per call, so a row's "
    "class depends on the other rows predicted with it: measured, never registered (static_int8 "
    "or prune give a model that predicts each row on its own)"
)


def chosen_method(method: str, arch: str, text: bool) -> str:
    """The method ``compress.method`` means for ``arch`` (``auto`` resolved)."""
    if method != "auto":
        return method
    return (AUTO_TEXT if text else AUTO)[arch]


def compress(
    params: Params,
    arch: Architecture,
    prepared_dir: Path | str,
    model_dir: Path | str,
    out_dir: Path | str,
    report_path: Path | str,
    *,
    project_root: Path | str = ".",
) -> dict[str, Any]:
    """Compress ``model_dir`` by ``compress.method``; write the folder and the report; return the report."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamsError(
            f"{out_dir}: exists and is not a folder; compress writes the compressed model into one"
        )
    prepared = load_prepared(prepared_dir)
    test = require_split(prepared, "test", prepared_dir)
    trained = load_trained_model(model_dir, "cpu")
    version = check_same_data(trained, prepared, prepared_dir, f"re-run train@{arch} first")
    text = trained.config.vocab_size is not None
    method = chosen_method(params.compress.method, arch, text)
    report: dict[str, Any] = {"architecture": arch, "method": method, "threads": torch.get_num_threads()}
    report["model_fingerprint"] = trained.info.get("fingerprint")  # which float model (the summary checks)
    problem = _not_applicable(method, arch, text)
    tensors: dict[str, torch.Tensor] = {}
    if problem is None:
        train = require_split(prepared, "train", prepared_dir)
        x_test = torch.from_numpy(test.x)  # (N, C, H, W) normalised, or (N, L) token ids
        class_names = list(prepared.stats.class_names)
        before = model_figures(trained.model, x_test, test.labels, class_names)
        float_tensors = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
        before |= stored_figures(float_tensors)
        compressed = _compressed(params, method, trained, train)
        tensors, layout = to_tensors(compressed)
        after = model_figures(compressed, x_test, test.labels, class_names) | stored_figures(tensors)
        report |= _verdict(before, after, params.compress.max_accuracy_drop)
        if method == "dynamic_int8":
            report |= {"accepted": False, "reason": f"{BATCH_DEPENDENT}; {report['reason']}"}
        report |= {"before": before, "after": after, "data_version": version}
        report |= {"engine": torch.backends.quantized.engine, "layout": layout}
    else:
        report |= {"accepted": False, "reason": problem}
    card = {k: v for k, v in report.items() if k not in ("before", "after")}
    summary = {k: v for k, v in report.items() if k != "layout"}
    with atomic_directory(out_dir) as folder:
        if report["accepted"]:
            write_compressed(folder, trained, tensors, card)
        else:
            write_marker(folder, card)
        atomic_write_json(report_path, summary)
        _log_to_mlflow(params, arch, trained.info, summary, Path(report_path), project_root, version)
    return summary


def _not_applicable(method: str, arch: str, text: bool) -> str | None:
    """Why ``method`` yields no compressed model for ``arch``, or None."""
    if method == "none":
        return "compress.method is none: no compressed model"
    if method == "static_int8" and (arch not in STATIC_ARCHITECTURES or text):
        kind = "text " if text else ""
        return f"compress.method static_int8 applies to the image mlp and cnn only, not the {kind}{arch}"
    return None


def _compressed(params: Params, method: str, trained: TrainedModel, train: PreparedSplit) -> torch.nn.Module:
    """A compressed copy of ``trained.model`` (the float model stays as it was)."""
    network = copy.deepcopy(trained.model).cpu().eval()
    settings = params.compress
    if method == "prune":
        x, labels = torch.from_numpy(train.x), torch.from_numpy(train.labels)
        return prune_and_finetune(
            network, settings.prune_amount, settings.finetune_epochs, x, labels,
            batch_size=params.train.batch_size, learning_rate=params.train.learning_rate,
            seed=params.train.seed,
        )  # fmt: skip
    quantised_engine()
    return quantise(network, method, _calibration(train, settings.calibration_batches, params.train.seed))


def _calibration(train: PreparedSplit, batches: int, seed: int) -> list[torch.Tensor]:
    """``batches`` batches of 256 training inputs (a seeded draw): never test data."""
    order = torch.randperm(len(train.x), generator=torch.Generator().manual_seed(seed))
    rows = order[: batches * LARGE_BATCH]
    x = torch.from_numpy(train.x)[rows]
    return list(x.split(LARGE_BATCH))


def _verdict(before: dict[str, Any], after: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Accepted when test accuracy fell by at most ``max_drop``; the reason either way."""
    drop = before["accuracy"] - after["accuracy"]
    ratio = before["size_bytes"] / after["size_bytes"] if after["size_bytes"] else float("nan")
    speed = after["samples_per_second_batch_256"] / before["samples_per_second_batch_256"]
    accepted = drop <= max_drop + 1e-12
    verb = "within" if accepted else "more than"
    reason = (
        f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} (drop {drop:.4f}, {verb} "
        f"compress.max_accuracy_drop {max_drop:g}); {ratio:.2f}x smaller, "
        f"{speed:.2f}x throughput at batch 256"
    )
    return {
        "accepted": accepted,
        "reason": reason,
        "accuracy_drop": drop,
        "size_ratio": ratio,
        "speedup_256": speed,
    }


def _log_to_mlflow(
    params: Params,
    arch: Architecture,
    info: dict[str, Any],
    report: dict[str, Any],
    report_path: Path,
    project_root: Path | str,
    version: str,
) -> None:
    """The figures under ``compress_`` names and the report file, in the run that trained the model."""
    tracker = Tracker.open(experiment_name(params), project_root)
    mlflow_info = info.get("mlflow") or {}
    run_id, parent = mlflow_info.get("run_id"), mlflow_info.get("parent_run_id")
    metrics = {"compress_accepted": float(report["accepted"]), "compress_threads": float(report["threads"])}
    for side in ("before", "after"):
        metrics |= {f"compress_{side}_{k}": float(v) for k, v in report.get(side, {}).items()}
    if run_id and tracker.run_exists(run_id):
        context = tracker.reopened(run_id, parent)
    else:  # trained against another tracking server: record the compression on its own
        code = code_tags(project_root)
        parent = tracker.parent_run(
            pipeline_key(params, version, code["git.commit"]), {"data.version": version, **code}
        )
        context = tracker.child_run(
            parent, f"{arch}-compress", {"architecture": arch, "data.version": version, **code}
        )
    with context as run:
        run.set_tags(
            {"compression.method": str(report["method"]), "compression.accepted": str(report["accepted"])}
        )
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:  # the report alone (its folder holds evaluate's files)
            shutil.copyfile(report_path, Path(tmp) / report_path.name)
            run.log_artifacts(Path(tmp), "compression")
