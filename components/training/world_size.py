"""How many training processes ``params.yaml`` asks for, and whether a launcher started that many."""

from __future__ import annotations

import os

import torch

from components.config import TrainParams
from components.errors import ParamsError
from components.training.speed import device_kind


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
