"""The accuracy-ε curve of the cnn on real MNIST (``../shared/data/mnist-10k``), with wall times
and the membership-inference advantage of every model.

The 10,000-image MNIST test set is split as bench/mnist_accuracy.py splits it (8,000 for training:
7,000 fitted, 1,000 for validation; 2,000 held out). The cnn is trained without DP and with
DP-SGD at each ε (δ = 1e-5) through the same ``train`` and ``evaluate`` functions the DVC stages
call; evaluate runs the loss-threshold attack (members: training examples; non-members: the
held-out ones). Run with ``OMP_NUM_THREADS=1`` on a shared machine.

    OMP_NUM_THREADS=1 uv run python bench/privacy.py --data ../shared/data/mnist-10k
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from components.config import load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.evaluation.evaluate import PRIVACY, evaluate
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]

COMMON: dict[str, Any] = {
    "data.source": "idx",
    "preprocess.seed": 42,
    "preprocess.val_fraction": 0.1,
    "preprocess.test_fraction": 0.2,
    "train.architectures": ["cnn"],
}
# Without DP: bench/mnist_accuracy.py's cnn recipe, bounded to the epochs given.
PLAIN: dict[str, Any] = {"train.batch_size": 64, "models.cnn.dense_size": 128, "models.cnn.dropout": 0.25}
# DP-SGD: a smaller network (less noise per useful coordinate), larger Poisson batches, a higher
# learning rate, every planned epoch used (the budget covers them all anyway).
PRIVATE: dict[str, Any] = {
    "train.batch_size": 256,
    "train.learning_rate": 0.003,
    "train.early_stopping_patience": 0,
    "models.cnn.channels": [16, 32],
    "models.cnn.dense_size": 32,
    "train.privacy.enabled": True,
    "train.privacy.delta": 1e-5,
    "train.privacy.max_grad_norm": 1.0,
    "train.privacy.accountant": "prv",
}

app = typer.Typer(add_completion=False, help=__doc__)


def _run(root: Path, prepared: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    params = load_params(REPO / "params.yaml", overrides)
    started = time.perf_counter()
    result = train(
        params, "cnn", prepared, root / "models" / name, work_root=root / ".work", project_root=root
    )
    wall = time.perf_counter() - started
    reports = root / "reports" / name
    metrics = evaluate(params, "cnn", prepared, root / "models" / name, reports, project_root=root)
    attack = json.loads((reports / PRIVACY).read_text(encoding="utf-8"))
    privacy = result.info.get("privacy") or {}
    return {
        "run": name,
        "epsilon": round(privacy["epsilon"], 3) if privacy else None,
        "noise_multiplier": round(privacy["noise_multiplier"], 3) if privacy else None,
        "accuracy": round(metrics["accuracy"], 4),
        "epochs": result.info["epochs"],
        "train_wall_s": round(wall, 1),
        "mia_advantage": round(attack["advantage"], 4),
        "mia_auc": round(attack["auc"], 4),
    }


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="Folder with the MNIST IDX files.")] = REPO.parent
    / "shared"
    / "data"
    / "mnist-10k",
    epochs: Annotated[int, typer.Option(help="max_epochs of every run.")] = 15,
    epsilons: Annotated[
        list[float] | None, typer.Option("--epsilon", help="ε values (default 1, 3, 8).")
    ] = None,
    plain: Annotated[bool, typer.Option(help="Also train without DP.")] = True,
    workdir: Annotated[Path | None, typer.Option(help="Keep the project here (default: a temp dir).")] = None,
) -> None:
    root = workdir or Path(tempfile.mkdtemp(prefix="privacy-bench-"))
    common = {**COMMON, "data.path": str(data.resolve()), "train.max_epochs": epochs}
    base = load_params(REPO / "params.yaml", common)
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    ingest(base.data, raw, root)
    manifest = preprocess(base.preprocess, raw, prepared)
    print(f"splits={ {k: v['count'] for k, v in manifest['splits'].items()} } workdir={root}", flush=True)
    runs = [("no-dp", {**common, **PLAIN})] if plain else []
    for eps in epsilons or [1.0, 3.0, 8.0]:
        runs.append((f"eps-{eps:g}", {**common, **PRIVATE, "train.privacy.target_epsilon": eps}))
    rows = []
    for name, overrides in runs:
        rows.append(_run(root, prepared, name, overrides))
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    header = "run | ε (δ 1e-5) | noise multiplier | holdout accuracy | epochs | train wall time"
    print(f"\n| {header} | MIA advantage | MIA AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "—" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        sigma = "—" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.2f}"
        print(
            f"| {r['run']} | {eps} | {sigma} | {r['accuracy']:.2%} | {r['epochs']} | {r['train_wall_s']} s "
            f"| {r['mia_advantage']:.4f} | {r['mia_auc']:.4f} |"
        )


if __name__ == "__main__":
    app()
