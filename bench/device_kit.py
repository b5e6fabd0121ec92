"""Wheels a lent GPU machine lacks for the GPU checks, pinned by ``uv.lock``.

The GPU machines this project is sometimes lent (see ``bench/gpu_checks.sh``) come with torch,
torchvision, Lightning, torchmetrics, NumPy, pandas, scikit-learn, Typer, rich and safetensors,
but not MLflow or pydantic, and they cannot reach a package index. This downloads, here, the wheels
of what the checks import and the image lacks (``CARRY``), at the versions ``uv.lock`` pins, for
the machine's Python (3.12, x86-64 Linux), into ``.whl/`` (ignored by git):

    uv run python bench/device_kit.py            # then carry .whl with bench/gpu_checks.sh

``--python-version`` targets another interpreter. The list was checked by running
``bench/gpu_checks.sh`` on a CPU in a virtual environment holding only the image's packages (at
``uv.lock``'s versions) plus these wheels built for its Python: every step ran (the
60,000-image one until its time limit).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

REPO = Path(__file__).resolve().parents[1]

# What the train stage, bench/train_throughput.py, bench/inference.py and tests/test_gpu.py import
# (MLflow's client with its SQLite store, pydantic and croniter for params) that the machine's image did not
# hold when last listed (2026-11). mlflow-skinny, not mlflow: the full wheel adds the server and
# its web UI, 30 MB the checks never load.
CARRY = (
    "alembic",
    "annotated-types",
    "cachetools",
    "cffi",
    "croniter",
    "cryptography",
    "databricks-sdk",
    "fastapi",
    "google-auth",
    "greenlet",
    "importlib-metadata",
    "mako",
    "mlflow-skinny",
    "mlflow-tracing",
    "opentelemetry-api",
    "opentelemetry-proto",
    "opentelemetry-sdk",
    "opentelemetry-semantic-conventions",
    "orjson",
    "pyasn1",
    "pyasn1-modules",
    "pydantic",
    "pydantic-core",
    "pydantic-extra-types",
    "pycparser",
    "pydot",
    "python-dateutil",
    "python-dotenv",
    "pytz",
    "sniffio",
    "sqlalchemy",
    "sqlparse",
    "starlette",
    "typing-inspection",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

app = typer.Typer(add_completion=False, help=__doc__)


def locked_versions(python_version: str) -> dict[str, str]:
    """``name -> version`` that ``uv.lock`` pins for Linux x86-64 on ``python_version`` (``uv export``)."""
    from packaging.markers import Marker

    exported = subprocess.run(
        ["uv", "export", "--frozen", "--no-hashes", "--no-header", "--no-emit-project"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    machine = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    pins = {}
    for line in exported.splitlines():
        requirement, _, marker = line.partition(";")
        if "==" in requirement and (not marker.strip() or Marker(marker.strip()).evaluate(machine)):
            name, version = requirement.strip().split("==", 1)
            pins[name.lower()] = version
    return pins


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Folder for the wheels.")] = REPO / ".whl",
    python_version: Annotated[str, typer.Option(help="The machine's Python, major.minor.")] = "3.12",
) -> None:
    """Download the wheels of ``CARRY`` at their locked versions; print their total size.

    pip does the download (``uvx pip``: uv's own installer has no download command).
    """
    pins = locked_versions(python_version)
    missing = [name for name in CARRY if name not in pins]
    if missing:
        raise typer.BadParameter(f"not in uv.lock: {', '.join(missing)} (update CARRY)")
    out.mkdir(parents=True, exist_ok=True)
    command = [
        "uvx", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", "--dest", str(out),
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        *(f"{name}=={pins[name]}" for name in CARRY),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    typer.echo(f"wheels={len(wheels)} megabytes={size / 2**20:.1f} folder={out}")


if __name__ == "__main__":
    app()
