"""Training as a subprocess: ``python -m pipelines.train``, or ``torchrun ... -m pipelines.train``.

The flow trains on one device in its own process (one training at a time, see
:mod:`flows.pipeline`) and calls this for several devices or nodes. One process per node runs the
stage command itself (the command ``dvc.yaml`` runs); several run it under ``torchrun``.

A Prefect task (or any in-process caller) cannot run DDP by calling :func:`~components.training.
train.train` with several devices: Lightning's own launcher would re-run the caller's script once
per rank. Instead, :func:`launch_training` starts PyTorch's elastic launcher (``torchrun``, run as
``python -m torch.distributed.run`` with this interpreter) on the stage CLI, which runs unchanged in
every process; Lightning detects the torchrun environment, rank zero writes ``models/<arch>/`` and
the MLflow run, and this function returns once every rank has finished, or raises with the exit
status and the last lines of output.

The command runs under :func:`~components.training.supervise.run_streaming`, which streams its
output and turns the exit codes its ranks recorded (torchrun itself exits 1) into one error. With
several nodes each node's launcher sees its own ranks' codes only.

The settings travel as a validated params file written to ``<work_root>/launch/`` (so overrides a
flow applied in memory reach every rank); the parent MLflow run travels in ``PIPELINE_PARENT_RUN_ID``
(pass it in ``env``) and extra run tags as ``--tag`` options.

One node: ``torchrun --standalone``. Several nodes: call this on every node with the same
:class:`Rendezvous` (host:port of a process on one of them, and a job id); torchrun's ``c10d``
rendezvous assigns the ranks. On SLURM and Kubernetes the batch script / job manifest in ``infra/``
start the processes themselves instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Architecture, Params, dump_params
from components.errors import (
    ParamsError,
)
from components.training.artifacts import TRAIN_INFO, read_train_info
from components.training.supervise import TrainingLaunchError, run_streaming, stderr_line
from components.training.world_size import needs_launcher, processes_per_node

LAUNCH_DIR = "launch"


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet (``torchrun --rdzv-backend c10d``)."""

    endpoint: str  # host:port reachable from every node, e.g. the first node's address and a free port
    job_id: str  # the same string on every node of one run, different between runs


@dataclass(frozen=True)
class LaunchResult:
    """What a finished launch produced."""

    command: list[str]  # the command that ran
    model_dir: Path  # written by global rank zero
    info: dict[str, Any] | None  # models/<arch>/train_info.json; None on a node without rank zero
    run_id: str | None  # the MLflow run rank zero logged to; None where info is None
    seconds: float  # wall time of the whole launch (start-up of every process included)


def torchrun_command(
    arch: Architecture,
    params_file: Path | str,
    prepared_dir: Path | str,
    out_dir: Path | str,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    work_root: Path | str = ".work",
    rendezvous: Rendezvous | None = None,
    tags: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The ``torchrun`` command line that runs ``pipelines.train`` in ``nproc_per_node`` processes.

    ``nnodes`` > 1 needs a ``rendezvous``; one node uses ``--standalone`` (a free local port).
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ParamsError(f"train.devices and train.num_nodes must be >= 1 (got {nproc_per_node}, {nnodes})")
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and rendezvous is None:
        command += ["--standalone", "--nnodes=1"]
    elif rendezvous is None:
        raise ParamsError(
            f"train.num_nodes: {nnodes} nodes need a rendezvous endpoint (host:port reachable from "
            "every node) and a job id; or start the processes with SLURM/Kubernetes (infra/)"
        )
    else:
        command += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}",
            f"--rdzv-id={rendezvous.job_id}",
        ]
    return command + stage_args(arch, params_file, prepared_dir, out_dir, work_root, tags)


def stage_args(
    arch: Architecture,
    params_file: Path | str,
    prepared_dir: Path | str,
    out_dir: Path | str,
    work_root: Path | str = ".work",
    tags: Mapping[str, str] | None = None,
) -> list[str]:
    """``-m pipelines.train ...``: the train stage command after the interpreter (or torchrun)."""
    command = ["-m", "pipelines.train", "--arch", arch, "--params", str(params_file)]
    command += ["--prepared", str(prepared_dir), "--out", str(out_dir), "--work", str(work_root)]
    for key, value in (tags or {}).items():
        command += ["--tag", f"{key}={value}"]
    return command


def write_launch_params(params: Params, arch: Architecture, work_root: Path | str) -> Path:
    """The validated settings as ``<work_root>/launch/<arch>-params.yaml``, for every rank to load."""
    path = Path(work_root) / LAUNCH_DIR / f"{arch}-params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return dump_params(params, path)


def launch_training(
    params: Params,
    arch: Architecture,
    prepared_dir: Path | str,
    out_dir: Path | str,
    *,
    work_root: Path | str = ".work",
    project_root: Path | str = ".",
    tags: Mapping[str, str] | None = None,
    rendezvous: Rendezvous | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] = stderr_line,
    timeout_s: float | None = None,
) -> LaunchResult:
    """Train ``arch`` in a subprocess: the stage command, or ``torchrun`` when ``train.devices`` or
    ``train.num_nodes`` ask for more than one process.

    Same arguments as :func:`~components.training.train.train`, plus where several nodes meet,
    extra environment for the ranks (``MLFLOW_TRACKING_URI``, ``PIPELINE_PARENT_RUN_ID``, ...), a
    line sink for their output (default: this process's stderr) and an optional time limit (see
    :func:`run_streaming`).
    Relative paths are taken from ``project_root``, the processes' working directory.
    Raises :class:`TrainingLaunchError` if any rank fails (:class:`TrainingUnavailable` when one
    exited 75, ``returncode`` 2 when one rejected its input; see :func:`run_streaming`), and
    :class:`ParamsError` on a bad setup.
    """
    project_root = Path(project_root)
    params_file = write_launch_params(params, arch, project_root / work_root)
    if needs_launcher(params.train) or rendezvous is not None:
        command = torchrun_command(
            arch,
            params_file.resolve(),
            prepared_dir,
            out_dir,
            nproc_per_node=processes_per_node(params.train),
            nnodes=params.train.num_nodes,
            work_root=work_root,
            rendezvous=rendezvous,
            tags=tags,
        )
    else:  # one process: the stage command itself
        command = [
            sys.executable,
            *stage_args(arch, params_file.resolve(), prepared_dir, out_dir, work_root, tags),
        ]
    wall_start, started = time.time(), time.perf_counter()
    run_streaming(
        command,
        cwd=project_root,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        on_line=on_line,
        timeout_s=timeout_s,
    )
    seconds = time.perf_counter() - started
    params_file.unlink(missing_ok=True)
    model_dir = project_root / out_dir
    info = _new_train_info(model_dir, since=wall_start - 1, required=rendezvous is None)
    run_id = (info.get("mlflow") or {}).get("run_id") if info else None
    return LaunchResult(command, model_dir, info, run_id, round(seconds, 3))


def _new_train_info(model_dir: Path, since: float, required: bool) -> dict[str, Any] | None:
    """``train_info.json`` if the launch wrote it (newer than ``since``); on one node (``required``)
    rank zero ran here and must have, so its absence is an error."""
    info_file = model_dir / TRAIN_INFO
    if info_file.is_file() and info_file.stat().st_mtime >= since:
        return read_train_info(info_file)
    if required:
        raise TrainingLaunchError(f"training finished but wrote no new {info_file}", 0, [])
    return None
