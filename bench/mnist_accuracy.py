"""Holdout accuracy of every architecture on real MNIST images (``../shared/data/mnist-10k``).

The 10,000-image MNIST test set is split with the project's own stages, stratified with a fixed
seed: 8,000 images for training (7,000 fitted, 1,000 for validation/early stopping) and 2,000
held out. Each architecture is trained with the recipe below through the same ``train`` and
``evaluate`` functions the DVC stages call, on the device ``train.accelerator`` picks.

Prints one ``key=value`` line per architecture and a Markdown table for BENCHMARKS.md.

    uv run python bench/mnist_accuracy.py --data ../shared/data/mnist-10k
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from components.config import ALL_ARCHITECTURES, load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]

# What differs from params.yaml per architecture (dotted keys, as `dvc exp run -S` takes them).
COMMON: dict[str, Any] = {
    "data.source": "idx",
    "preprocess.seed": 42,
    "preprocess.val_fraction": 0.1,
    "preprocess.test_fraction": 0.2,
    "train.max_epochs": 30,
    "train.early_stopping_patience": 5,
    "train.batch_size": 64,
}
RECIPES: dict[str, dict[str, Any]] = {
    "mlp": {"models.mlp.dropout": 0.5},
    "cnn": {"models.cnn.dense_size": 128, "models.cnn.dropout": 0.25},
    "lstm": {"models.lstm.num_layers": 2, "train.learning_rate": 0.002},
    "transformer": {
        "models.transformer.patch_size": 7,
        "models.transformer.dropout": 0.2,
        "train.weight_decay": 0.0001,
    },
}

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="Folder with the MNIST IDX files.")] = REPO.parent
    / "shared"
    / "data"
    / "mnist-10k",
    workdir: Annotated[Path | None, typer.Option(help="Keep the project here (default: a temp dir).")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: all four).")] = None,
) -> None:
    root = workdir or Path(tempfile.mkdtemp(prefix="mnist-accuracy-"))
    root.mkdir(parents=True, exist_ok=True)
    common = {**COMMON, "data.path": str(data.resolve())}
    base = load_params(REPO / "params.yaml", common)
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    ingest(base.data, raw, root)
    manifest = preprocess(base.preprocess, raw, prepared)
    counts = {name: entry["count"] for name, entry in manifest["splits"].items()}
    print(f"data={data} splits={counts} workdir={root}")

    rows = []
    for name in arch or list(ALL_ARCHITECTURES):
        params = load_params(REPO / "params.yaml", {**common, **RECIPES[name]})
        started = time.perf_counter()
        result = train(
            params,
            name,
            prepared,
            root / "models" / name,
            work_root=root / ".work",
            project_root=root,  # type: ignore[arg-type]
        )
        wall = time.perf_counter() - started
        metrics = evaluate(
            params,
            name,
            prepared,
            root / "models" / name,
            root / "reports" / name,
            project_root=root,  # type: ignore[arg-type]
        )
        info = result.info
        row = {
            "arch": name,
            "accuracy": round(metrics["accuracy"], 4),
            "f1_macro": round(metrics["f1_macro"], 4),
            "epochs": info["epochs"],
            "train_wall_s": round(wall, 1),
            "fit_s": info["fit_seconds"],
            "parameters": info["parameters"],
            "inference_images_per_s": round(metrics["images_per_second"]),
            "device": info["device"],
            "overrides": " ".join(f"{k}={v}" for k, v in RECIPES[name].items()),
        }
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    print(
        "\n| architecture | holdout accuracy | macro-F1 | epochs | train wall time "
        "| parameters | inference images/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['accuracy']:.2%} | {r['f1_macro']:.4f} | {r['epochs']} "
            f"| {r['train_wall_s']} s | {r['parameters']:,} | {r['inference_images_per_s']:,} |"
        )


if __name__ == "__main__":
    app()
