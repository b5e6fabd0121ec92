"""A seeded 25-trial sweep with pruning per architecture on the embedded default (digits).

For each architecture: the params.yaml defaults trained once (their validation accuracy at the kept
epoch, and test accuracy), then ``run_sweep`` (the function behind ``python -m flows.sweep``) with
the space below, timed; then the winner retrained through ``train`` and scored on the test split by
``evaluate``, like the pipeline would. Prints one ``key=value`` line per architecture and a
Markdown table. ``--set`` overrides params (another dataset, or the whole space as YAML), e.g.
the patch-size measurement behind ``models.transformer.patch_size: auto`` (docs/models-and-training.md).
Run with one thread per process on a shared machine:

    OMP_NUM_THREADS=1 uv run python bench/sweep.py --arch mlp --arch cnn
    OMP_NUM_THREADS=1 uv run python bench/sweep.py --arch transformer --n-trials 10 \
        -S data.source=idx -S data.path=../shared/data/mnist-10k \
        -S 'sweep.space={models.transformer.patch_size: {choices: [4, 7, 14]},
            train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}}'
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from components.config import ALL_ARCHITECTURES, Architecture, Params, key_overrides, load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.sweep.run import run_sweep
from components.sweep.trial import objective_value
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]
LR = {"low": 1.0e-4, "high": 1.0e-2, "log": True}
BATCH = {"choices": [32, 64, 128, 256]}
SPACES: dict[str, dict[str, Any]] = {
    "mlp": {
        "models.mlp.dropout": {"low": 0.0, "high": 0.5},
        "models.mlp.hidden_sizes": {"choices": [[128], [256, 128], [512, 256]]},
    },
    "cnn": {"models.cnn.dropout": {"low": 0.0, "high": 0.5}, "models.cnn.dense_size": {"choices": [64, 128]}},
    "lstm": {"models.lstm.hidden_size": {"choices": [32, 64, 128]}},
    "transformer": {
        "models.transformer.dropout": {"low": 0.0, "high": 0.3},
        "train.weight_decay": {"low": 1.0e-6, "high": 1.0e-3, "log": True},
    },
}


def _train_and_test(
    params: Params, arch: Architecture, prepared: Path, root: Path, name: str
) -> tuple[float, float]:
    """(validation accuracy at the kept epoch, test accuracy) of ``params`` for ``arch``."""
    model = root / "models" / name
    result = train(params, arch, prepared, model, work_root=root / ".work", project_root=root)
    metrics = evaluate(params, arch, prepared, model, root / "reports" / name, project_root=root)
    return objective_value(result.info, "val_acc"), float(metrics["accuracy"])


def bench(
    arch: Architecture, root: Path, prepared: Path, n_trials: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    space = {"train.learning_rate": LR, "train.batch_size": BATCH, **SPACES[arch]}
    sweep = {"sweep.architecture": arch, "sweep.n_trials": n_trials, "sweep.seed": 0, "sweep.pruning": True}
    params = load_params(REPO / "params.yaml", {**sweep, "sweep.space": space, **overrides})
    default_val, default_test = _train_and_test(
        load_params(REPO / "params.yaml", overrides), arch, prepared, root, f"{arch}-default"
    )
    started = time.perf_counter()
    result = run_sweep(params, root, prepared, root / "sweeps")
    wall = time.perf_counter() - started
    winner = load_params(REPO / "params.yaml", {**overrides, **result.best_values})
    _, best_test = _train_and_test(winner, arch, prepared, root, f"{arch}-winner")
    states = [o.state.name.lower() for o in result.outcomes]
    return {
        "arch": arch,
        "sweep_wall_s": round(wall, 1),
        "trials": len(states),
        "pruned": states.count("pruned"),
        "failed": states.count("fail"),
        "best_val_acc": round(result.leaders[0]["value"], 4),
        "default_val_acc": round(default_val, 4),
        "winner_test_acc": round(best_test, 4),
        "default_test_acc": round(default_test, 4),
        "best": " ".join(f"{k}={v}" for k, v in result.best_values.items()),
        "trial_values": "; ".join(_trial_summary(o) for o in result.outcomes),
    }


def _trial_summary(outcome: Any) -> str:
    """``#3 pruned 0.9120 patch_size=7 learning_rate=0.0021 (41.2 s)``: one trial, for the record."""
    values = " ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in outcome.values.items()
    )
    value = f"{outcome.value:.4f}" if outcome.value is not None else "-"
    return f"#{outcome.number} {outcome.state.name.lower()} {value} {values} ({outcome.seconds:.1f} s)"


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: all four).")] = None,
    n_trials: Annotated[int, typer.Option(help="Trials per sweep.")] = 25,
    workdir: Annotated[Path | None, typer.Option(help="Keep the project here (default: a temp dir).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="key=value params override, value read as YAML (repeatable)."),
    ] = None,
) -> None:
    root = (workdir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    overrides = key_overrides(set_ or [])
    if "data.path" in overrides:  # relative to the caller, as typed
        overrides["data.path"] = str(Path(overrides["data.path"]).resolve())
    base = load_params(REPO / "params.yaml", overrides)
    prepared = root / "data" / "prepared"
    ingest(base.data, root / "data" / "raw", root)
    preprocess(base.preprocess, root / "data" / "raw", prepared)
    print(f"workdir={root} threads={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    for name in arch or list(ALL_ARCHITECTURES):
        row = bench(cast(Architecture, name), root, prepared, n_trials, overrides)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(
        "\n| architecture | sweep wall | trials (pruned) | best val acc | defaults' val acc "
        "| winner test acc | defaults' test acc |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['sweep_wall_s']} s | {r['trials']} ({r['pruned']}) "
            f"| {r['best_val_acc']:.2%} | {r['default_val_acc']:.2%} "
            f"| {r['winner_test_acc']:.2%} | {r['default_test_acc']:.2%} |"
        )


if __name__ == "__main__":
    app()
