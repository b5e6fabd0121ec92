"""Attributions on real MNIST images and the stage's cost on the embedded digits.

1. ``../shared/data/mnist-10k`` split by the project's own stages (8,000 train / 2,000 test, as
   bench/mnist_accuracy.py), every architecture trained for ``--epochs`` epochs, then the explain
   stage's function with ``explain.samples_per_class`` = ``--per-class`` (a seeded sample of the
   test split): largest integrated-gradients convergence delta, and accuracy drops after deleting
   the top-10% attributed pixels against a random 10%.
2. The embedded digits with the repository's params.yaml (``train.max_epochs`` = ``--epochs``):
   the explain stage's own time per architecture (its report's ``seconds``: no process start).

Prints one ``key=value`` line per measurement and a Markdown table.

    OMP_NUM_THREADS=1 uv run python bench/explain.py --data ../shared/data/mnist-10k
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from components.config import ALL_ARCHITECTURES, load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.interpret.explain import explain
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]
MNIST: dict[str, Any] = {
    "data.source": "idx",
    "preprocess.seed": 42,
    "preprocess.val_fraction": 0.1,
    "preprocess.test_fraction": 0.2,
    "train.batch_size": 64,
}

app = typer.Typer(add_completion=False, help=__doc__)


def _run(root: Path, overrides: dict[str, Any], archs: list[str]) -> list[dict[str, Any]]:
    """Prepare, then train, evaluate and explain each architecture under ``root``; a row each."""
    base = load_params(REPO / "params.yaml", overrides)
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    ingest(base.data, raw, root)
    preprocess(base.preprocess, raw, prepared)
    rows = []
    for arch in archs:
        model, reports = root / "models" / arch, root / "reports" / arch
        train(base, arch, prepared, model, work_root=root / ".work", project_root=root)  # type: ignore[arg-type]
        metrics = evaluate(base, arch, prepared, model, reports, project_root=root)  # type: ignore[arg-type]
        report = explain(base, arch, prepared, model, reports, project_root=root)  # type: ignore[arg-type]
        ig = report["integrated_gradients"]
        deletion, saliency = ig["deletion"], report["saliency"]["deletion"]
        row = {
            "arch": arch,
            "test_accuracy": round(metrics["accuracy"], 4),
            "samples": report["samples"],
            "max_abs_delta": f"{ig['max_abs_delta']:.2g}",
            "steps_used": ig["steps_used"],
            "refined": ig["refined_inputs"],
            "accuracy": round(deletion["accuracy"], 4),
            "ig_top_drop": round(deletion["top_drop"], 4),
            "random_drop": round(deletion["random_drop"], 4),
            "ig_ratio": None if deletion["drop_ratio"] is None else round(deletion["drop_ratio"], 1),
            "saliency_top_drop": round(saliency["top_drop"], 4),
            "faithful": report["faithful"],
            "explain_s": report["seconds"],
        }
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def _table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}\n")
    print("| architecture | samples | largest IG delta | steps | top-10% drop | random-10% drop | ratio "
          "| saliency top drop | explain s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['samples']} | {r['max_abs_delta']} | {r['steps_used']} "
            f"| {r['ig_top_drop']:.3f} | {r['random_drop']:.3f} | {r['ig_ratio']} "
            f"| {r['saliency_top_drop']:.3f} | {r['explain_s']} |"
        )


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="Folder with the MNIST IDX files.")] = REPO.parent
    / "shared"
    / "data"
    / "mnist-10k",
    epochs: Annotated[int, typer.Option(help="Training epochs per architecture.")] = 3,
    per_class: Annotated[int, typer.Option(help="MNIST: explain.samples_per_class.")] = 50,
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: all four).")] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the projects here (default: a temp dir).")
    ] = None,
) -> None:
    root = workdir or Path(tempfile.mkdtemp(prefix="bench-explain-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    archs = arch or list(ALL_ARCHITECTURES)
    mnist = {**MNIST, "data.path": str(data.resolve()), "train.max_epochs": epochs}
    mnist["explain.samples_per_class"] = per_class
    _table("MNIST (2,000 test images)", _run(root / "mnist", mnist, archs))
    _table("digits, params.yaml defaults", _run(root / "digits", {"train.max_epochs": epochs}, archs))


if __name__ == "__main__":
    app()
