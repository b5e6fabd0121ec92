"""Shared fixtures: a project folder with its own params.yaml, and stage runners."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Nothing in the test suite may phone home.
for key, value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(key, value)

# One CPU thread per process for torch's kernels (OpenMP) and BLAS: make test runs three pytest
# workers, each starting stage and server processes, on machines with as few as two cores, where
# every process spinning up a full thread pool slows all of them down. Set before torch is imported
# here, and inherited by every subprocess the tests start (so the flow and dvc repro still compute
# alike). An explicit OMP_NUM_THREADS in the environment wins.
for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(key, "1")


# The longest test files start first, so that `pytest -n 3 --dist loadfile` (make test) does not
# end with one worker running a long file alone. make test passes --no-loadscope-reorder: xdist
# would otherwise reorder files by test count, the long end-to-end files (few tests each) last.
# A stable sort: order inside a file is kept.
_LONGEST_FIRST = (
    "test_flow.py",
    "test_postgres.py",
    "test_dvc_repro.py",
    "test_distributed.py",
    "test_dependencies.py",
)


# The suite's layers, by file: `pytest -m unit` runs in seconds; `-m integration` runs the real
# stage functions, MLflow on SQLite and Lightning at tiny sizes in this process; `-m e2e` starts real
# processes, signals and servers (dvc repro, the flow CLI, mlflow/prefect servers, PostgreSQL).
LAYERS = {
    "unit": (
        "test_atomic.py", "test_compress_params.py", "test_docs.py", "test_dvc_stage_deps.py",
        "test_explain_units.py", "test_infra.py", "test_metrics.py", "test_models.py", "test_params.py",
        "test_privacy.py", "test_speed.py", "test_sweep_space.py", "test_token_models.py",
    ),
    "integration": (
        "test_compress.py", "test_corrupt_inputs.py", "test_evaluation.py", "test_explain.py",
        "test_faults_files.py", "test_gpu.py", "test_mlflow_datasets.py", "test_model_behaviour.py",
        "test_offline_plots.py", "test_orchestration.py", "test_preprocess.py", "test_privacy_training.py",
        "test_real_mnist.py", "test_registry.py", "test_sources.py", "test_summary.py", "test_sweep.py",
        "test_text_data.py", "test_text_behaviour.py", "test_text_evaluation.py", "test_text_registry.py",
        "test_tracking.py", "test_training.py",
    ),
    "e2e": (
        "test_dependencies.py", "test_distributed.py", "test_dvc_repro.py", "test_faults_concurrency.py",
        "test_faults_kept.py", "test_faults_preemption.py", "test_faults_services.py", "test_flow.py",
        "test_postgres.py", "test_sweep_processes.py", "test_text_serving.py",
    ),
}  # fmt: skip
_LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    for item in items:
        layer = _LAYER_OF.get(item.path.name)
        if layer is None:
            raise pytest.UsageError(f"{item.path.name}: add it to a layer in tests/conftest.py LAYERS")
        item.add_marker(getattr(pytest.mark, layer))


# Model sizes small enough that every architecture trains in a second on a CPU.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden_sizes": [32]},
    "cnn": {"channels": [8, 16], "dense_size": 16},
    "lstm": {"hidden_size": 16, "dense_size": 16},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_size": 32},
}


def tiny_params(max_epochs: int = 2, **train: Any) -> dict[str, Any]:
    """The repository's params with tiny models and a short, single-process training run."""
    params = default_params()
    params["train"].update(max_epochs=max_epochs, num_workers=0, **train)
    for arch, sizes in TINY_MODELS.items():
        params["models"][arch].update(sizes)
    return params


def default_params() -> dict[str, Any]:
    """The repository's params.yaml as a mapping."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


class Project:
    """A temporary project folder: ``params.yaml`` plus ``data/``, and the stage CLIs to run in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.params_file = root / "params.yaml"
        self.raw = root / "data" / "raw"
        self.prepared = root / "data" / "prepared"
        self.write_params()

    def write_params(self, **sections: dict[str, Any]) -> Path:
        """Write params.yaml: the repository defaults with the given sections' keys replaced."""
        params = default_params()
        for name, values in sections.items():
            params[name] = {**params.get(name, {}), **values}
        self.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        return self.params_file

    def run(self, stage: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m pipelines.<stage>`` in the project folder, as DVC would."""
        return subprocess.run(
            [sys.executable, "-m", f"pipelines.{stage}", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
            check=False,
        )


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def prepare_digits(root: Path) -> Path:
    """Ingest and preprocess the embedded digits under ``root/data``; return the prepared folder."""
    from components.config import DataParams, PreprocessParams
    from components.data.ingest import ingest
    from components.data.preprocess import preprocess

    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    ingest(DataParams(), raw)
    preprocess(PreprocessParams(), raw, prepared)
    return prepared


@functools.cache
def _empty_mlflow_db() -> Path:
    """An MLflow SQLite store with every migration applied and nothing in it, built once per process.

    A new store runs MLflow's schema migrations, about 2.5 s of CPU; tests that need an empty store
    copy this one instead. tests/test_flow.py's flow run still creates its store from nothing.
    """
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="pipeline-tests-mlflow-")) / "mlflow.db"
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def empty_mlflow_store(path: Path) -> str:
    """Copy an empty, migrated MLflow SQLite store to ``path``; its tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_mlflow_db(), path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh SQLite MLflow store for the module, exported as ``MLFLOW_TRACKING_URI``."""
    uri = empty_mlflow_store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the prepared digits (so runs carry a real commit)."""
    root = tmp_path_factory.mktemp("digits-project")
    prepare_digits(root)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for args in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
    return root
