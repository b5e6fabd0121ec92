"""Explain one trained architecture on the test split: the function behind ``explain@<arch>``.

Writes, after ``evaluate@<arch>`` (whose ``metrics.json`` it reads, for the accuracy on the whole
test split beside the sample's):

- ``reports/<arch>/explain/``      ``attributions.png`` (images: the per-class grid; text: the top
                                   tokens per class), text only: ``wrong_predictions.html`` and
                                   ``top_tokens.json``. Replaced as a whole.
- ``reports/<arch>/explain.json``  convergence deltas, deletion test, ``faithful``, warnings (DVC
                                   metrics; beside the folder, as DVC outputs may not overlap)

and logs both to the architecture's MLflow run (the one the train stage recorded), the PNG as an
image the UI shows. With ``explain.enabled: false`` it writes a short report saying so, and a
folder holding a note, and logs nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric

from components.atomic import atomic_directory, atomic_write_json, dumps_json
from components.config import Architecture, Params
from components.data.normalize import Normalization
from components.data.prepared import load_prepared, require_split
from components.data.text_stats import TextStats
from components.errors import DataValidationError
from components.evaluation.evaluate import METRICS, evaluation_device
from components.naming import experiment_name
from components.tracking import Tracker
from components.training.artifacts import TrainedModel, check_same_data, load_trained_model

FOLDER = "explain"
REPORT = "explain.json"
DISABLED_NOTE = "DISABLED.txt"
TOP_TOKENS_FILE = "top_tokens.json"


def explain(
    params: Params,
    arch: Architecture,
    prepared_dir: Path | str,
    model_dir: Path | str,
    report_dir: Path | str,
    *,
    project_root: Path | str = ".",
) -> dict[str, Any]:
    """Explain ``model_dir`` on the test split of ``prepared_dir``; write into ``report_dir``
    (``reports/<arch>``) its ``explain/`` folder and ``explain.json``; return the report."""
    began = time.perf_counter()
    report_dir = Path(report_dir)
    if not params.explain.enabled:
        report: dict[str, Any] = {"enabled": False, "reason": "explain.enabled is false in params.yaml"}
        with atomic_directory(report_dir / FOLDER) as folder:
            (folder / DISABLED_NOTE).write_text("explain.enabled is false: no attributions computed\n")
        atomic_write_json(report_dir / REPORT, report)
        return report
    prepared = load_prepared(prepared_dir)
    test = require_split(prepared, "test", prepared_dir)
    device = evaluation_device(params)
    trained = load_trained_model(model_dir, device)
    check_same_data(trained, prepared, Path(prepared_dir), f"re-run train@{arch} first")
    evaluated = _evaluate_accuracy(report_dir / METRICS, arch)
    title = f"{arch}: integrated gradients ({params.explain.steps} steps)"
    x = torch.from_numpy(test.x).to(device)  # (N, C, H, W) normalised, or (N, L) token ids
    if isinstance(trained.stats, TextStats):
        from components.interpret.text import TOP_TOKENS, explain_text

        vocabulary = _vocabulary(trained)
        report, files, top = explain_text(
            trained.model, x, test.labels, test.texts or [""] * len(test.labels), trained.stats,
            vocabulary, params.explain, params.evaluate.batch_size, title,
        )  # fmt: skip
        files[TOP_TOKENS_FILE] = dumps_json({"per_class": top, "listed": TOP_TOKENS}).encode()
    else:
        from components.interpret.images import explain_images

        assert isinstance(trained.stats, Normalization)
        report, files = explain_images(
            trained.model, x, test.labels, trained.stats, params.explain, params.evaluate.batch_size, title
        )
    report.update(evaluate_accuracy=evaluated, seconds=round(time.perf_counter() - began, 3))
    with atomic_directory(report_dir / FOLDER) as folder:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        _log_to_mlflow(params, trained, report, folder, project_root)
    atomic_write_json(report_dir / REPORT, report)
    return report


def _evaluate_accuracy(path: Path, arch: str) -> float:
    """The test accuracy ``evaluate@<arch>`` recorded (the explain stage runs after it)."""
    if not path.is_file():
        raise DataValidationError(path, f"missing (run evaluate@{arch} first)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["accuracy"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataValidationError(path, "must hold the evaluate stage's metrics", str(exc)) from None
    if not isinstance(value, int | float):
        raise DataValidationError(path, "accuracy must be a number")
    return float(value)


def _vocabulary(trained: TrainedModel) -> list[str]:
    """Token id -> its text, from the tokenizer the model was trained with."""
    from components.data.tokenize import load_tokenizer

    assert trained.tokenizer is not None
    tokenizer = load_tokenizer(trained.tokenizer)
    return [tokenizer.id_to_token(i) or "?" for i in range(tokenizer.get_vocab_size())]


def _numbers(report: dict[str, Any], prefix: str = "explain") -> dict[str, float]:
    """Every number (and true/false) of ``report``, flattened to MLflow metric names."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}_{key}"
        if isinstance(value, dict):
            flat.update(_numbers(value, name))
        elif isinstance(value, bool | int | float):
            flat[name] = float(value)
    return flat


def _log_to_mlflow(
    params: Params, trained: TrainedModel, report: dict[str, Any], folder: Path, project_root: Path | str
) -> None:
    """Add the figures and numbers to the run that trained the model (a model trained against
    another tracking server has no run here: nothing is logged, as the report says)."""
    run_id = (trained.info.get("mlflow") or {}).get("run_id")
    tracker = Tracker.open(experiment_name(params), project_root)
    if not run_id or not tracker.run_exists(run_id):
        report.setdefault("warnings", []).append(
            "not logged to MLflow: the training run is not on this server"
        )
        return
    parent = (trained.info.get("mlflow") or {}).get("parent_run_id")
    with tracker.reopened(run_id, parent) as run:
        # Sent synchronously: a queued batch makes ending the run wait about a second for the queue.
        now = int(time.time() * 1000)
        run.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in _numbers(report).items()])
        run.log_artifacts(folder, "explain")  # the PNG shows as an image in the run's artifacts
        run.client.log_text(run_id, dumps_json(report), "explain/explain.json")
