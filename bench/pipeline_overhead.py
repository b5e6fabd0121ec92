"""Pipeline overhead: what orchestration adds to the stages' own compute.

In fresh copies of this project (tracked files only, their own git repository, MLflow store and DVC
cache), with the chosen architectures and epochs:

- **compute**: every stage's component function called in this process, imports done and a warm-up
  call made first: ``ingest``, ``preprocess``, ``train`` and ``evaluate`` per architecture,
  ``register`` per architecture. Their summed wall time is the work the pipeline cannot avoid.
- **dvc repro**: ``dvc repro`` from scratch (one process per stage, each paying its imports).
- **dvc repro, nothing to do**: ``dvc repro`` again right after (best of ``--repeats``).
- **flow, cold**: ``python -m flows.pipeline`` in a new process (Prefect's ephemeral server starts,
  every import paid; on one device training runs in the flow's process, one architecture at a
  time, while evaluate and register of a trained one proceed).
- **flow, warm**: the flow called in this process on another fresh copy, with the Prefect server
  already up and every import done (a first flow run warmed it).

Overhead = wall time - summed compute. Prints one ``key=value`` line.

    uv run python bench/pipeline_overhead.py --arch mlp --arch cnn
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, help=__doc__)


def _env(root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    env.pop("PYTHONPATH", None)
    return env


def _copy_project(root: Path, params: dict[str, Any]) -> Path:
    """The tracked files (no tests, no built outputs) in a new git repository at ``root``."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        if name.startswith(("tests/", "bench/")) or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)  # nothing built yet
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(args, cwd=root, env=_env(root), check=True, capture_output=True)
    return root


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _command(args: list[str], root: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=root, env=_env(root), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {root}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return elapsed


def _compute(root: Path, archs: list[str]) -> dict[str, float]:
    """Each stage's component call in this process (imports and a warm-up done first)."""
    from components.config import load_params
    from components.data.ingest import ingest
    from components.data.preprocess import preprocess
    from components.evaluation.evaluate import evaluate
    from components.registry.register import register
    from components.training.train import train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    params = load_params(root / "params.yaml")
    raw, prepared = root / "data/raw", root / "data/prepared"
    seconds = {
        "ingest": _timed(lambda: ingest(params.data, raw, root=root)),
        "preprocess": _timed(lambda: preprocess(params.preprocess, raw, prepared)),
    }
    # Warm-up: the first Trainer in a process pays one-off set-up that a stage process pays too,
    # but that belongs to start-up, not to the stage's compute.
    warm = params.model_copy(update={"train": params.train.model_copy(update={"max_epochs": 1})})
    train(warm, archs[0], prepared, root / "warm-up", work_root=root / ".work-warm", project_root=root)
    for arch in archs:
        model, reports = root / "models" / arch, root / "reports" / arch
        seconds[f"train@{arch}"] = _timed(
            lambda a=arch, m=model: train(params, a, prepared, m, work_root=root / ".work", project_root=root)
        )
        seconds[f"evaluate@{arch}"] = _timed(
            lambda a=arch, m=model, r=reports: evaluate(params, a, prepared, m, r, project_root=root)
        )
    for arch in archs:
        seconds[f"register@{arch}"] = _timed(
            lambda a=arch: register(params, a, root / "models" / a, prepared, project_root=root)
        )
    return seconds


@app.command()
def main(
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: params.yaml's).")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override train.max_epochs.")] = None,
    repeats: Annotated[int, typer.Option(help="Runs of the no-op dvc repro.")] = 3,
    keep: Annotated[bool, typer.Option(help="Keep the temporary projects.")] = False,
) -> None:
    """Measure the flow and dvc repro against the stages' summed compute; print one key=value line."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if arch:
        params["train"]["architectures"] = list(arch)
    if max_epochs:
        params["train"]["max_epochs"] = max_epochs
    archs = list(params["train"]["architectures"])
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="pipeline-overhead-"))
    try:
        copies = {name: _copy_project(work / name, params) for name in ("compute", "dvc", "cold", "warm")}
        compute = _compute(copies["compute"], archs)
        compute_s = sum(compute.values())

        repro_s = _command([python, "-m", "dvc", "repro"], copies["dvc"])
        noop = [_command([python, "-m", "dvc", "repro"], copies["dvc"]) for _ in range(repeats)]
        status = subprocess.run(
            [python, "-m", "dvc", "status", "--json"], cwd=copies["dvc"], env=_env(copies["dvc"]),
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if status != "{}":
            raise SystemExit(f"dvc status not clean after dvc repro: {status}")

        cold_s = _command([python, "-m", "flows.pipeline", "--no-summary"], copies["cold"])

        from prefect.testing.utilities import prefect_test_harness

        from flows.pipeline import training_pipeline

        with prefect_test_harness(server_startup_timeout=120):
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{copies['cold'] / 'mlflow.db'}"
            training_pipeline(project_root=str(copies["cold"]))  # warms imports and the server
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{copies['warm'] / 'mlflow.db'}"
            warm_s = _timed(lambda: training_pipeline(project_root=str(copies["warm"])))
    finally:
        if keep:
            print(f"projects kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    figures = {
        "archs": ",".join(archs),
        "max_epochs": params["train"]["max_epochs"],
        "compute_s": f"{compute_s:.1f}",
        **{f"compute_{name}_s": f"{value:.1f}" for name, value in compute.items()},
        "dvc_repro_s": f"{repro_s:.1f}",
        "dvc_repro_overhead_s": f"{repro_s - compute_s:.1f}",
        "dvc_repro_noop_s": f"{statistics.median(noop):.2f}",
        "dvc_repro_noop_best_s": f"{min(noop):.2f}",
        "flow_cold_s": f"{cold_s:.1f}",
        "flow_cold_overhead_s": f"{cold_s - compute_s:.1f}",
        "flow_warm_s": f"{warm_s:.1f}",
        "flow_warm_overhead_s": f"{warm_s - compute_s:.1f}",
    }
    print(" ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    app()
