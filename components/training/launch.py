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

torchrun exits 1 whatever its workers exited with, so the stage's own exit codes (75: a service
did not answer, retried by the flow; 2: bad input) travel another way: the launcher points
``PIPELINE_EXIT_CODE_DIR`` at a fresh temporary folder, where each rank that fails with one of them
records it as ``rank-<RANK>.exit`` (:func:`pipelines._cli.run_stage`). With several nodes each
node's launcher sees its own ranks' codes only.

The settings travel as a validated params file written to ``<work_root>/launch/`` (so overrides a
flow applied in memory reach every rank); the parent MLflow run travels in ``PIPELINE_PARENT_RUN_ID``
(pass it in ``env``) and extra run tags as ``--tag`` options.

One node: ``torchrun --standalone``. Several nodes: call this on every node with the same
:class:`Rendezvous` (host:port of a process on one of them, and a job id); torchrun's ``c10d``
rendezvous assigns the ranks. On SLURM and Kubernetes the batch script / job manifest in ``infra/``
start the processes themselves instead.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from components.config import Architecture, Params, TrainParams, dump_params
from components.errors import (
    EXIT_BAD_INPUT,
    EXIT_CODE_DIR_ENV,
    EXIT_NO_SPACE,
    EXIT_PREEMPTED,
    EXIT_TRANSIENT,
    NoSpaceError,
    ParamsError,
    PipelineError,
    Preempted,
    TransientError,
    recorded_exit_codes,
)
from components.training.artifacts import TRAIN_INFO, read_train_info
from components.training.preemption import sigterm_raises
from components.training.speed import device_kind

LAUNCH_DIR = "launch"
_TAIL_LINES = 40

# Stopping a launch (timeout, interrupt): torchrun passes SIGTERM on to its workers and SIGKILLs them
# after its own shutdown timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default); it gets that
# long plus STOP_MARGIN_S before everything under it is SIGKILLed here, then KILL_WAIT_S to go.
TORCHRUN_SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
TORCHRUN_SHUTDOWN_S = 30.0
STOP_MARGIN_S = 15.0
KILL_WAIT_S = 10.0


class TrainingLaunchError(PipelineError):
    """The multi-process training command failed (non-zero exit, timeout or missing output)."""

    def __init__(self, message: str, returncode: int | None, tail: Sequence[str]) -> None:
        self.returncode = returncode
        self.tail = list(tail)
        shown = "\n".join(self.tail[-_TAIL_LINES:])
        super().__init__(f"{message}\n--- last output lines ---\n{shown}" if shown else message)


class TrainingOutOfSpace(TrainingLaunchError, NoSpaceError):
    """A training process ran out of disk space (exit code 74); nothing was replaced."""


class TrainingUnavailable(TrainingLaunchError, TransientError):
    """The training process could not reach a service it needs (exit code 75): worth a retry."""


class TrainingPreempted(TrainingLaunchError, Preempted):
    """The training was stopped by SIGTERM or Ctrl-C with its checkpoint kept (exit code 143): the
    same launch again resumes it."""


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


def processes_per_node(params: TrainParams) -> int:
    """``train.devices`` as a count: ``auto`` is every visible CUDA GPU on a GPU machine, else 1.

    Matches what Lightning's ``devices="auto"`` picks, which every rank checks against torchrun's
    world size (``devices * num_nodes``).
    """
    if params.devices != "auto":
        return params.devices
    if device_kind(params.accelerator) == "cuda":
        return max(torch.cuda.device_count(), 1)
    return 1


def needs_launcher(params: TrainParams) -> bool:
    """Whether ``params`` train in more than one process (then call :func:`launch_training`)."""
    return processes_per_node(params) > 1 or params.num_nodes > 1


def check_launched_world_size(params: TrainParams) -> None:
    """Refuse a ``torchrun``/``srun`` launch whose process count is not what ``params`` ask for.

    Lightning compares the two only for a parallel strategy: with ``train.devices: 1`` every one
    of N launched processes would train alone as rank zero, each writing ``models/<arch>/`` and its
    own MLflow run. Called before anything is read, written or logged. A plain ``python`` process,
    and the processes Lightning's own launcher starts, pass.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    per_node = processes_per_node(params)
    wanted = f"train.devices ({params.devices}: {per_node} per node) x train.num_nodes ({params.num_nodes})"
    if TorchElasticEnvironment.detect():
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        if (local, world) != (per_node, per_node * params.num_nodes):
            raise ParamsError(
                f"{wanted} = {per_node * params.num_nodes} processes, but torchrun started {world} "
                f"({local} on this node): set train.devices to --nproc-per-node and train.num_nodes "
                "to --nnodes"
            )
    elif SLURMEnvironment.detect():
        tasks = int(os.environ["SLURM_NTASKS"])
        if tasks != per_node * params.num_nodes:
            raise ParamsError(
                f"{wanted} = {per_node * params.num_nodes} processes, but srun started {tasks} tasks: "
                "set train.devices to --ntasks-per-node (one task per GPU) and train.num_nodes to --nodes"
            )


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


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def default_stop_grace_s(env: Mapping[str, str]) -> float:
    """How long a stopped launch may take before SIGKILL: torchrun's own shutdown timeout plus a margin."""
    try:
        own = float(env.get(TORCHRUN_SHUTDOWN_ENV, TORCHRUN_SHUTDOWN_S))
    except ValueError:
        own = TORCHRUN_SHUTDOWN_S
    return max(own, 0.0) + STOP_MARGIN_S


def run_streaming(
    command: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    on_line: Callable[[str], None] = _stderr_line,
    timeout_s: float | None = None,
    stop_grace_s: float | None = None,
    kill_wait_s: float = KILL_WAIT_S,
) -> None:
    """Run ``command``, passing each output line (stdout and stderr merged) to ``on_line`` as it comes.

    Raises :class:`TrainingLaunchError` with the exit status and the last lines on failure:
    :class:`TrainingPreempted` when the command or any rank exited 143 (stopped by SIGTERM with its
    checkpoint kept: run again to resume), :class:`TrainingUnavailable` (a retry may help) when one
    exited 75, and a plain :class:`TrainingLaunchError` with ``returncode`` 2 (bad input, no retry)
    when one exited 2.
    The ranks' codes come from the files they record in ``PIPELINE_EXIT_CODE_DIR`` (a temporary
    folder set here), since torchrun itself exits 1.

    On a timeout or an interrupt the command's process group gets SIGTERM (torchrun passes it on to
    its workers, which run in sessions of their own); after ``stop_grace_s`` (default: torchrun's
    shutdown timeout plus :data:`STOP_MARGIN_S`) the group and every process that was under the
    command, workers included, get SIGKILL. A SIGTERM to this process (main thread) stops the launch
    the same way, then raises :class:`TrainingPreempted` with what the ranks recorded.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    grace_s = default_stop_grace_s(env) if stop_grace_s is None else stop_grace_s
    what = " ".join(command)
    with tempfile.TemporaryDirectory(prefix="exit-codes-", ignore_cleanup_errors=True) as exit_dir:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**env, EXIT_CODE_DIR_ENV: exit_dir},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, apart from the caller's
        )

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                on_line(line)

        reader = threading.Thread(target=pump, name="launch-output", daemon=True)
        reader.start()
        preempted = False
        # A SIGTERM to this process (a preempted job) stops the launch as an interrupt does: torchrun
        # passes it on to the ranks, which write their checkpoints and exit 143.
        with sigterm_raises(f"training stopped by SIGTERM: {what}"):
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop(process, grace_s, kill_wait_s)
                reader.join(timeout=5)
                raise TrainingLaunchError(
                    f"training did not finish within {timeout_s:g} s: {what}", None, tail
                ) from None
            except Preempted:
                _stop(process, grace_s, kill_wait_s)
                preempted = True
                returncode = EXIT_PREEMPTED if process.returncode is None else process.returncode
            except BaseException:
                _stop(process, grace_s, kill_wait_s)
                raise
        reader.join(timeout=5)
        ranks = recorded_exit_codes(exit_dir) if returncode != 0 else {}
    if returncode == 0:
        return
    _raise_failed(returncode, ranks, what, tail, preempted)


def _raise_failed(
    returncode: int, ranks: dict[int, int], what: str, tail: Sequence[str], preempted: bool
) -> None:
    """Raise the :class:`TrainingLaunchError` for a launch that exited ``returncode``, whose ranks
    recorded ``ranks``; ``preempted``: this process got SIGTERM and stopped it."""
    codes = {returncode, *ranks.values()}
    by = ", ".join(f"rank {rank} exited {code}" for rank, code in sorted(ranks.items()))
    why = f"{by}; the launcher exited {returncode}" if by else f"exited with status {returncode}"
    if preempted or EXIT_PREEMPTED in codes:
        raise TrainingPreempted(
            f"training was stopped with its checkpoint kept ({why}); run it again to resume: {what}",
            EXIT_PREEMPTED,
            tail,
        )
    if EXIT_BAD_INPUT in codes:
        raise TrainingLaunchError(f"training rejected its input ({why}): {what}", EXIT_BAD_INPUT, tail)
    if EXIT_NO_SPACE in codes:
        raise TrainingOutOfSpace(f"training ran out of disk space ({why}): {what}", EXIT_NO_SPACE, tail)
    if EXIT_TRANSIENT in codes:
        raise TrainingUnavailable(f"training could not reach a service ({why}): {what}", EXIT_TRANSIENT, tail)
    raise TrainingLaunchError(f"training exited with status {returncode}: {what}", returncode, tail)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(process: subprocess.Popen[str], grace_s: float, kill_wait_s: float) -> None:
    """Stop ``process`` (torchrun) and every process under it, workers included.

    torchrun starts each worker in a session of its own, so a signal to ``process``'s group reaches
    torchrun alone; on SIGTERM it passes the signal on to its workers and SIGKILLs the ones still
    there after its own shutdown timeout. So: note the processes under it, SIGTERM the group, give
    it ``grace_s`` (longer than its own timeout, so its kill goes first), then SIGKILL the group and
    every noted process still running (a rank stuck in a collective ignores SIGTERM; torchrun may be
    stuck itself), and wait up to ``kill_wait_s`` for them to go.
    """
    under = {child.pid: child for child in _descendants(process.pid)}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:  # until reaped here, pid is torchrun's
        under.update((child.pid, child) for child in _descendants(process.pid))  # started meanwhile
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0.0)))
    if process.poll() is None:
        under.update((child.pid, child) for child in _descendants(process.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for child in under.values():
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks that the pid still names the process noted above
    deadline = time.monotonic() + kill_wait_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=kill_wait_s)
    while any(_alive(child) for child in under.values()) and time.monotonic() < deadline:
        time.sleep(0.05)


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
    on_line: Callable[[str], None] = _stderr_line,
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
    info_file = model_dir / TRAIN_INFO
    info: dict[str, Any] | None = None
    if info_file.is_file() and info_file.stat().st_mtime >= wall_start - 1:
        info = read_train_info(info_file)
    elif rendezvous is None:  # one node: rank zero ran here and must have written the folder
        raise TrainingLaunchError(f"training finished but wrote no new {info_file}", 0, [])
    run_id = (info.get("mlflow") or {}).get("run_id") if info else None
    return LaunchResult(command, model_dir, info, run_id, round(seconds, 3))
