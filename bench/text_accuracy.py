"""Test accuracy of every architecture on SST-2 (``../shared/data/sst2``): the text benchmark.

The folder holds ``train.tsv`` (phrases), ``dev.tsv`` (the validation split: early stopping) and
``test.tsv`` (the held-out sentences), header ``sentence<TAB>label``. The project's own stage
functions run in a temporary project, as ``dvc repro`` would: ingest, preprocess (the tokenizer
fitted on the train split), then ``train`` and ``evaluate`` per architecture, each timed.

Prints one ``key=value`` line per architecture and a Markdown table for BENCHMARKS.md.

    uv run python bench/text_accuracy.py --data ../shared/data/sst2                 # vocab 1,000
    uv run python bench/text_accuracy.py --data ../shared/data/sst2 --vocab-size 10000 --arch lstm
    uv run python bench/text_accuracy.py --data ../shared/data/sst2 --arch cnn -S models.cnn.dropout=0.5
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from components.config import ALL_ARCHITECTURES, key_overrides, load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]

app = typer.Typer(add_completion=False, help=__doc__)


def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - started


def _prepare(root: Path, overrides: dict[str, Any]) -> tuple[Path, dict[str, float]]:
    """Ingest and preprocess under ``root/data``; the prepared folder and each stage's seconds."""
    params = load_params(REPO / "params.yaml", overrides)
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    _, ingest_s = _timed(ingest, params.data, raw, root)
    manifest, preprocess_s = _timed(preprocess, params.preprocess, raw, prepared)
    splits = {name: entry["count"] for name, entry in manifest["splits"].items()}
    print(f"prepared={prepared} splits={splits}", flush=True)
    for name, entry in manifest["splits"].items():
        rates = {k: v for k, v in entry.items() if k.endswith("rate")}
        if rates:
            print(f"split={name} " + " ".join(f"{k}={v}" for k, v in rates.items()), flush=True)
    return prepared, {"ingest_s": round(ingest_s, 1), "preprocess_s": round(preprocess_s, 1)}


def _run_arch(root: Path, prepared: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate ``name``; its figures."""
    params = load_params(REPO / "params.yaml", overrides)
    model, report = root / "models" / name, root / "reports" / name
    result, train_s = _timed(
        train, params, name, prepared, model, work_root=root / ".work", project_root=root
    )
    metrics, evaluate_s = _timed(evaluate, params, name, prepared, model, report, project_root=root)
    info = result.info
    return {
        "arch": name,
        "vocab_size": params.preprocess.text.vocab_size,
        "accuracy": round(metrics["accuracy"], 4),
        "f1_macro": round(metrics["f1_macro"], 4),
        "epochs": info["epochs"],
        "train_wall_s": round(train_s, 1),
        "evaluate_wall_s": round(evaluate_s, 1),
        "fit_s": info["fit_seconds"],
        "parameters": info["parameters"],
        "inference_samples_per_s": round(metrics["samples_per_second"]),
        "device": info["device"],
    }


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="SST-2 folder: train.tsv, dev.tsv, test.tsv.")] = REPO.parent
    / "shared"
    / "data"
    / "sst2",
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: all four).")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="(default: preprocess.text.vocab_size)")] = None,
    text_column: Annotated[str, typer.Option(help="Column of the texts.")] = "sentence",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="key=value params override for every architecture (repeatable)."),
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Keep the project here (default: a temp dir).")] = None,
) -> None:
    """Run the stages on ``data`` and print per architecture: accuracy, epochs and wall times."""
    root = workdir or Path(tempfile.mkdtemp(prefix="text-accuracy-"))
    root.mkdir(parents=True, exist_ok=True)
    overrides = {
        "data.source": "text",
        "data.path": str(data.resolve()),
        "data.text_column": text_column,
        **key_overrides(set_ or []),
    }
    if vocab_size is not None:
        overrides["preprocess.text.vocab_size"] = vocab_size
    prepared, stage_s = _prepare(root, overrides)
    print(
        f"data={data} workdir={root} overrides={overrides} "
        + " ".join(f"{k}={v}" for k, v in stage_s.items())
    )
    rows = []
    for name in arch or list(ALL_ARCHITECTURES):
        row = {**_run_arch(root, prepared, name, overrides), **stage_s}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(
        "\n| architecture | vocab | test accuracy | macro-F1 | epochs | train wall time "
        "| evaluate wall time | parameters | inference samples/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['vocab_size']:,} | {r['accuracy']:.2%} | {r['f1_macro']:.4f} "
            f"| {r['epochs']} | {r['train_wall_s']} s | {r['evaluate_wall_s']} s | {r['parameters']:,} "
            f"| {r['inference_samples_per_s']:,} |"
        )


if __name__ == "__main__":
    app()
