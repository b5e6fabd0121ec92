"""Evaluate one trained architecture on the test split: the function behind ``evaluate@<arch>``.

Replaces ``reports/<arch>/`` as a whole (:func:`~components.atomic.atomic_directory`) once the
evaluation is logged to MLflow, so a failure at any point (the tracking server away included)
leaves the previous files as they were, never a mix of old and new:

- ``metrics.json``               accuracy, macro precision/recall/F1, latency, throughput (DVC metrics)
- ``classification_report.json`` per-class precision/recall/F1/support and the confusion matrix
- ``confusion_matrix.png``       the confusion matrix as a picture
- ``predictions.csv``            ``actual,predicted`` per test sample (DVC ``confusion`` plot)
- ``errors.csv``                 the 20 most confidently wrong predictions: the sentence (text data)
                                 or the test row (images), true and predicted class, probability
- ``privacy.json``               the membership-inference attack (:mod:`components.privacy.membership`)
                                 on training vs test examples: AUC and advantage, for every model;
                                 a DP model's ε, δ and noise are in ``metrics.json`` (``privacy_*``)

and logs the same to the architecture's MLflow run (the one the train stage recorded), with the
``test_`` prefix on metric names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mlflow.entities import DatasetInput

from components.atomic import atomic_directory, dumps_json
from components.code_version import code_tags
from components.config import Architecture, Params
from components.data.prepared import load_prepared, require_split
from components.errors import ParamsError
from components.evaluation.inference import Predictions, predict
from components.evaluation.metrics import classification_metrics, confusion_matrix
from components.evaluation.mistakes import errors_csv
from components.evaluation.plots import confusion_png, predictions_csv
from components.naming import experiment_name
from components.privacy.membership import membership_inference
from components.tracking import Tracker, pipeline_key
from components.tracking_datasets import split_inputs
from components.training.artifacts import check_same_data, load_trained_model

METRICS = "metrics.json"
REPORT = "classification_report.json"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS = "predictions.csv"
ERRORS = "errors.csv"
PRIVACY = "privacy.json"
# train_info.json's privacy figures copied into metrics.json (as privacy_<key>) for a DP model.
PRIVACY_FIGURES = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps")


def evaluation_device(params: Params) -> torch.device:
    """The GPU when training may use one and there is one, else the CPU."""
    if params.train.accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate(
    params: Params,
    arch: Architecture,
    prepared_dir: Path | str,
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    project_root: Path | str = ".",
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on the test split of ``prepared_dir``; return the summary metrics."""
    prepared_dir, model_dir, out_dir = Path(prepared_dir), Path(model_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamsError(f"{out_dir}: exists and is not a folder; evaluate writes its reports into one")
    prepared = load_prepared(prepared_dir)
    test = require_split(prepared, "test", prepared_dir)
    device = evaluation_device(params)
    trained = load_trained_model(model_dir, device)
    version = check_same_data(trained, prepared, prepared_dir, f"re-run train@{arch} first")
    test_input = split_inputs(params, prepared, prepared_dir, version, ("test",))

    x = torch.from_numpy(test.x).to(device)  # (N, C, H, W) normalised, or (N, L) token ids
    result = predict(trained.model, x, params.evaluate.batch_size)
    class_names = prepared.stats.class_names
    summary, report = classification_metrics(test.labels, result.classes, class_names)
    metrics = {**summary, **_speed_metrics(result, len(test.labels), params.evaluate.batch_size, test.texts)}
    metrics.update(privacy_metrics(trained.info))
    train_split = require_split(prepared, "train", prepared_dir)
    attack = membership_inference(
        trained.model,
        (train_split.x, train_split.labels),
        (test.x, test.labels),
        device,
        params.evaluate.batch_size,
        params.train.seed,
    )
    report.update(device=str(device), data_version=version, model_fingerprint=trained.info.get("fingerprint"))

    matrix = confusion_matrix(test.labels, result.classes, len(class_names))
    png = confusion_png(matrix, class_names, f"{arch}: test accuracy {summary['accuracy']:.4f}")
    with atomic_directory(out_dir) as reports:
        (reports / REPORT).write_text(dumps_json(report), encoding="utf-8")
        (reports / CONFUSION_PNG).write_bytes(png)
        csv = predictions_csv(test.labels, result.classes, class_names)
        (reports / PREDICTIONS).write_text(csv, encoding="utf-8")
        errors = errors_csv(test.labels, result.classes, result.confidence, class_names, test.texts)
        (reports / ERRORS).write_text(errors, encoding="utf-8")
        (reports / PRIVACY).write_text(dumps_json(attack), encoding="utf-8")
        (reports / METRICS).write_text(dumps_json(metrics), encoding="utf-8")
        extra = {"mia_auc": attack["auc"], "mia_advantage": attack["advantage"]}
        _log_to_mlflow(params, arch, trained.info, metrics, extra, reports, project_root, version, test_input)
    return metrics


def privacy_metrics(info: dict[str, Any]) -> dict[str, float]:
    """A DP model's ε, δ, noise multiplier, clipping norm, sampling rate and steps (``privacy_*``,
    from its train_info.json); nothing for a non-private model."""
    privacy = info.get("privacy")
    if not privacy:
        return {}
    return {f"privacy_{key}": float(privacy[key]) for key in PRIVACY_FIGURES}


def _speed_metrics(
    result: Predictions, count: int, batch_size: int, texts: list[str] | None
) -> dict[str, Any]:
    """Test-split size, timed batch size, latency and throughput. ``samples``: images or texts;
    image runs keep the older ``test_images`` and ``images_per_second`` keys beside them."""
    latency = result.latency_ms
    metrics: dict[str, Any] = {
        "test_samples": count,
        "batch_size": min(batch_size, count),  # the largest batch timed
        "latency_ms_per_batch": latency["median"],
        "latency_ms_per_batch_p95": latency["p95"],
        "samples_per_second": result.samples_per_second,
    }
    if texts is None:
        metrics.update(test_images=count, images_per_second=result.samples_per_second)
    return metrics


def _log_to_mlflow(
    params: Params,
    arch: Architecture,
    info: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, float],
    reports: Path,
    project_root: Path | str,
    version: str,
    inputs: list[DatasetInput],
) -> None:
    """Add the test metrics, ``extra`` (the attack's, as named), report files and test split
    (``inputs``) to the run that trained the model."""
    tracker = Tracker.open(experiment_name(params), project_root)
    mlflow_info = info.get("mlflow") or {}
    run_id = mlflow_info.get("run_id")
    parent = mlflow_info.get("parent_run_id")
    # metrics.json's keys under a test_ prefix (test_accuracy beside train_acc), once: its
    # test_samples count stays test_samples, not test_test_samples.
    # The privacy_* figures keep the names training logged them under.
    kept = ("test_", "privacy_")
    numeric = {(k if k.startswith(kept) else f"test_{k}"): float(value) for k, value in metrics.items()}
    numeric.update(extra)
    if run_id and tracker.run_exists(run_id):
        context = tracker.reopened(run_id, parent)
    else:  # trained against another tracking server: record the evaluation on its own
        code = code_tags(project_root)
        key = pipeline_key(params, version, code["git.commit"])
        parent = tracker.parent_run(key, {"data.version": version, **code})
        tags = {"architecture": arch, "data.version": version, **code}
        context = tracker.child_run(parent, f"{arch}-evaluate", tags)
    with context as run:
        run.log_metrics(numeric)
        run.log_inputs(inputs)
        run.log_artifacts(reports, "evaluation")  # the report files, errors.csv included, nothing else
