"""Compression on real MNIST images (``../shared/data/mnist-10k``): every applicable method per
architecture against the float model, on one CPU thread.

Trains each architecture (params.yaml sizes, a few epochs), then runs the ``compress@<arch>``
stage function once per method and prints, per (architecture, method): test accuracy drop (points),
size ratio (float bytes / compressed bytes) and throughput ratio at batch 256 (compressed / float),
plus batch-1 latency both ways, whether the stage accepted it, and how many of the first 64 test
rows got another class alone than in a batch of 256 (batch dependence).

    OMP_NUM_THREADS=1 uv run python bench/compression.py --epochs 3
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from components.compression.compress import compress
from components.config import ALL_ARCHITECTURES, load_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]
COMMON: dict[str, Any] = {
    "data.source": "idx",
    "preprocess.val_fraction": 0.1,
    "preprocess.test_fraction": 0.2,
    "train.batch_size": 64,
    "train.accelerator": "cpu",
}
METHODS = {
    "mlp": ["static_int8", "dynamic_int8", "prune"],
    "cnn": ["static_int8", "dynamic_int8", "prune"],
    "lstm": ["dynamic_int8", "prune"],
    "transformer": ["dynamic_int8", "prune"],
}
app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="MNIST IDX folder.")] = REPO.parent
    / "shared"
    / "data"
    / "mnist-10k",
    epochs: Annotated[int, typer.Option(help="Training epochs per architecture.")] = 3,
    arch: Annotated[list[str] | None, typer.Option(help="Architectures (default: all four).")] = None,
) -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="compression-bench-"))
    common = {**COMMON, "data.path": str(data.resolve()), "train.max_epochs": epochs}
    base = load_params(REPO / "params.yaml", common)
    prepared = root / "data" / "prepared"
    ingest(base.data, root / "data" / "raw", root)
    preprocess(base.preprocess, root / "data" / "raw", prepared)
    print(f"data={data} threads={torch.get_num_threads()} workdir={root}", flush=True)
    print(
        "| arch | method | float acc | acc drop (points) | size | size ratio | b256 speed-up "
        "| b1 ms float -> compressed | rows changed by batch | accepted |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in arch or list(ALL_ARCHITECTURES):
        params = load_params(REPO / "params.yaml", common)
        train(params, name, prepared, root / "models" / name, work_root=root / ".work", project_root=root,
              progress_bar=False)  # fmt: skip
        for method in METHODS[name]:
            settings = load_params(REPO / "params.yaml", {**common, "compress.method": method})
            report = compress(settings, name, prepared, root / "models" / name, root / "models" / f"{name}-c",
                              root / "reports" / name / f"{method}.json", project_root=root)  # fmt: skip
            before, after = report["before"], report["after"]
            print(
                f"| {name} | {method} | {before['accuracy']:.4f} | {100 * report['accuracy_drop']:+.2f} "
                f"| {before['size_bytes']:,} -> {after['size_bytes']:,} B | {report['size_ratio']:.2f}x "
                f"| {report['speedup_256']:.2f}x | {before['latency_ms_batch_1']:.3f} -> "
                f"{after['latency_ms_batch_1']:.3f} | {after['rows_changed_by_batch']} "
                f"| {report['accepted']} |",
                flush=True,
            )


if __name__ == "__main__":
    app()
