"""Multi-process training: rank sharding of both batch paths, rank detection under each launcher,
the launch component, and a real two-process DDP run on CPU (gloo) through ``torchrun``."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from lightning.fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.utilities import rank_zero as fabric_rank_zero
from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from components.config import TrainParams, validate_params
from components.errors import ParamsError
from components.training.artifacts import WEIGHTS, weights_digest
from components.training.batches import EpochSampler, TensorBatches, streaming_loader
from components.training.launch import Rendezvous, launch_training, torchrun_command
from components.training.speed import resolve_speed
from components.training.supervise import TrainingLaunchError, run_streaming
from components.training.train import train
from components.training.trainer import build_trainer
from components.training.world_size import check_launched_world_size
from tests.conftest import empty_mlflow_store, prepare_digits, tiny_params

DIGITS_TRAIN = 1257  # rows of the digits train split


@pytest.mark.parametrize("n", [10, 11, 1257])
@pytest.mark.parametrize("world_size", [2, 3])
def test_training_shares_are_disjoint_equal_and_drawn_from_one_permutation(n: int, world_size: int) -> None:
    single = EpochSampler(n, seed=7, shuffle=True)
    single.set_epoch(3)
    shards = []
    for rank in range(world_size):
        sampler = EpochSampler(n, seed=7, shuffle=True, rank=rank, world_size=world_size)
        sampler.set_epoch(3)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == n // world_size
    taken = [i for shard in shards for i in shard]
    assert len(set(taken)) == len(taken) == n // world_size * world_size  # distinct across ranks
    # Interleaved slices of the single-process order, cut to a multiple of the world size.
    assert sorted(taken) == sorted(single.order()[: len(taken)].tolist())
    assert shards[0] == single.order()[: len(taken)][0::world_size].tolist()


@pytest.mark.parametrize("world_size", [2, 3])
def test_validation_shares_cover_every_sample_once(world_size: int) -> None:
    n = 11
    samplers = [
        EpochSampler(n, 0, shuffle=False, rank=r, world_size=world_size, even=False)
        for r in range(world_size)
    ]
    shards = [list(sampler) for sampler in samplers]
    assert [len(shard) for shard in shards] == [len(sampler) for sampler in samplers]
    assert sorted(i for shard in shards for i in shard) == list(range(n))


def test_one_process_keeps_the_whole_epoch_in_the_same_order() -> None:
    sampler = EpochSampler(1257, seed=0, shuffle=True)
    generator = torch.Generator().manual_seed(0 * 1_000_003 + 0)
    assert list(sampler) == torch.randperm(1257, generator=generator).tolist()


@pytest.mark.parametrize("rank", [0, 1])
def test_both_batch_paths_serve_the_same_batches_to_each_rank(rank: int) -> None:
    x = torch.arange(101 * 3, dtype=torch.float32).reshape(101, 3)  # (N, 3)
    y = torch.nn.functional.one_hot(torch.arange(101) % 4, 4).float()  # (N, 4)
    memory = TensorBatches(x, y, 16, seed=5, shuffle=True, rank=rank, world_size=2)
    loader = streaming_loader(x, y, 16, seed=5, shuffle=True, num_workers=0, rank=rank, world_size=2)
    for epoch in (0, 1):
        memory.sampler.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        a, b = list(memory), list(loader)
        assert len(a) == len(b) == len(memory) == math.ceil(50 / 16)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)


@pytest.fixture
def restore_rank_zero() -> Iterator[None]:
    """Building a Trainer for rank 1 sets Lightning's process-wide ``rank_zero_only.rank``; undo it."""
    saved = pytorch_rank_zero.rank_zero_only.rank, fabric_rank_zero.rank_zero_only.rank
    yield
    pytorch_rank_zero.rank_zero_only.rank, fabric_rank_zero.rank_zero_only.rank = saved


LAUNCHER_ENV = {
    "torchrun": (
        TorchElasticEnvironment,
        {
            "TORCHELASTIC_RUN_ID": "t",
            "RANK": "1",
            "LOCAL_RANK": "1",
            "GROUP_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29999",
        },
    ),
    "srun": (
        SLURMEnvironment,
        {
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_NNODES": "1",
            "SLURM_PROCID": "1",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "0",
            "SLURM_JOB_ID": "42",
            "SLURM_JOB_NAME": "train",
            "SLURM_NODELIST": "node01",
        },
    ),
    # A process started by Lightning's own ``ddp`` launcher (the launching process is rank 0).
    "lightning-ddp": (LightningEnvironment, {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}),
}


@pytest.mark.usefixtures("restore_rank_zero")
@pytest.mark.parametrize("launcher", sorted(LAUNCHER_ENV))
def test_the_trainer_knows_its_rank_before_fit_under_each_launcher(
    launcher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train`` decides who writes and logs from ``trainer.is_global_zero`` before ``fit``."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    environment_type, env = LAUNCHER_ENV[launcher]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    params = TrainParams(accelerator="cpu", devices=2, strategy="ddp")
    trainer = build_trainer(params, resolve_speed(params, "mlp"), tmp_path, [], interactive=False)
    assert isinstance(trainer.strategy.cluster_environment, environment_type)
    assert (trainer.global_rank, trainer.world_size, trainer.is_global_zero) == (1, 2, False)


@pytest.mark.parametrize("launcher", sorted(LAUNCHER_ENV))
def test_a_launch_of_another_process_count_than_params_ask_is_refused_before_anything_runs(
    launcher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two launched processes and ``devices: 1``: Lightning would not check (no parallel strategy),
    and each process would train alone as rank zero, writing the outputs and its own MLflow run."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in LAUNCHER_ENV[launcher][1].items():
        monkeypatch.setenv(key, value)
    check_launched_world_size(TrainParams(accelerator="cpu", devices=2))  # 2 processes, as launched
    if launcher == "lightning-ddp":  # Lightning's own launcher started what params asked for
        check_launched_world_size(TrainParams(accelerator="cpu", devices=1))
        return
    with pytest.raises(ParamsError, match=rf"= 1 processes, but {launcher} started 2"):
        check_launched_world_size(TrainParams(accelerator="cpu", devices=1))
    with pytest.raises(ParamsError, match=rf"= 4 processes, but {launcher} started 2"):
        check_launched_world_size(TrainParams(accelerator="cpu", devices=2, num_nodes=2))
    # The train stage refuses first: before reading its (here missing) input or writing anything.
    raw = tiny_params()
    raw["train"].update(accelerator="cpu", devices=1)
    with pytest.raises(ParamsError, match=r"train\.devices"):
        train(validate_params(raw), "mlp", tmp_path / "prepared", tmp_path / "out", work_root=tmp_path / "w")
    assert list(tmp_path.iterdir()) == []


def test_torchrun_command_runs_the_stage_cli_on_one_node_or_several() -> None:
    one = torchrun_command("cnn", "p.yaml", "data/prepared", "models/cnn", nproc_per_node=4, python="py")
    assert one[:5] == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone"]
    assert one[one.index("-m", 3) : one.index("-m", 3) + 4] == ["-m", "pipelines.train", "--arch", "cnn"]
    many = torchrun_command(
        "cnn",
        "p.yaml",
        "data/prepared",
        "models/cnn",
        nproc_per_node=8,
        nnodes=2,
        rendezvous=Rendezvous("node0:29400", "job-1"),
        tags={"flow_run": "abc"},
    )
    assert "--nnodes=2" in many
    assert "--rdzv-endpoint=node0:29400" in many
    assert many[-2:] == ["--tag", "flow_run=abc"]
    with pytest.raises(ParamsError, match=r"train\.num_nodes: 2 nodes need a rendezvous"):
        torchrun_command("cnn", "p.yaml", "d", "m", nproc_per_node=8, nnodes=2)


def test_a_failing_launch_raises_with_its_status_and_last_lines(tmp_path: Path) -> None:
    seen: list[str] = []
    script = "import sys; print('rank 1 failed: out of memory'); sys.exit(3)"
    with pytest.raises(TrainingLaunchError, match="status 3") as info:
        run_streaming([sys.executable, "-c", script], cwd=tmp_path, env={}, on_line=seen.append)
    assert info.value.returncode == 3
    assert "rank 1 failed: out of memory" in str(info.value)
    assert seen == ["rank 1 failed: out of memory"]
    with pytest.raises(TrainingLaunchError, match=r"did not finish within 0\.5 s"):
        run_streaming(
            [sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path, env={}, timeout_s=0.5
        )


# A rank that ignores SIGTERM (as one stuck in a collective does) and has a child of its own (as a
# DataLoader worker is); both write their pids to <argv[1]>/rank-<RANK>.pids.
STUCK_RANK = """
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits SIG_IGN
rank = os.environ["RANK"]
(Path(sys.argv[1]) / f"rank-{rank}.pids").write_text(f"{os.getpid()} {child.pid}")
# One write: torchrun runs workers with -u, where print() writes the text and the newline apart and
# the two ranks' lines could interleave.
os.write(1, f"rank {rank} started\\n".encode())
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Cancelled(Exception):
    """Raised in the test's main thread while it waits for torchrun, as a flow cancellation would be."""


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_a_stopped_launch_leaves_no_rank_behind(stop: str, tmp_path: Path) -> None:
    """torchrun starts each worker in a session of its own, out of reach of a signal to its process
    group. With torchrun's own SIGTERM-to-SIGKILL wait (60 s here) longer than the launcher's grace,
    only the launcher's SIGKILL to every process under torchrun stops these ranks and their children."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_RANK, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += ["--nproc-per-node=2", str(script), str(tmp_path)]
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60"}
    lines: list[str] = []
    ranks_up: list[str] = []
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def on_line(line: str) -> None:  # "cancel": interrupt the wait once both ranks are up
        lines.append(line)
        if line.startswith("rank ") and line.endswith(" started"):
            ranks_up.append(line)
            if stop == "cancel" and len(ranks_up) == 2:
                signal.pthread_kill(main_thread, signal.SIGUSR1)

    def cancel(signum: int, frame: object) -> None:
        raise _Cancelled

    # "timeout": 15 s is twice what torchrun takes to start both ranks on a busy 2-core machine.
    timeout_s = 15 if stop == "timeout" else 120
    expected = {"timeout": TrainingLaunchError, "cancel": _Cancelled}[stop]
    previous = signal.signal(signal.SIGUSR1, cancel)
    started = time.monotonic()
    try:
        with pytest.raises(expected):
            run_streaming(
                command,
                cwd=tmp_path,
                env=env,
                on_line=on_line,
                timeout_s=timeout_s,
                stop_grace_s=1,
                kill_wait_s=5,
            )
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < timeout_s + 1 + 5 + 3
    pids = [int(pid) for file in sorted(tmp_path.glob("rank-*.pids")) for pid in file.read_text().split()]
    assert len(pids) == 4, "\n".join(lines)  # two ranks and their children had started
    assert [pid for pid in pids if _running(pid)] == []


def test_two_ddp_processes_train_one_model_and_log_one_run(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2`` on CPU (gloo): both ranks finish, each trained on half of every
    epoch, rank zero alone wrote the output and the MLflow run, and the saved weights are the ones
    every rank ended with."""
    prepare_digits(tmp_path)
    uri = empty_mlflow_store(tmp_path / "mlflow.db")
    params = validate_params(
        tiny_params(max_epochs=2, early_stopping_patience=0, accelerator="cpu", devices=2, strategy="ddp")
    )
    lines: list[str] = []
    result = launch_training(
        params,
        "mlp",
        "data/prepared",
        "models/mlp",
        project_root=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
        on_line=lines.append,
        timeout_s=240,
    )
    info = result.info
    assert info is not None
    assert info["world_size"] == 2
    steps_per_epoch = math.ceil(DIGITS_TRAIN // 2 / params.train.batch_size)  # half the single-process 10
    assert info["global_steps"] == 2 * steps_per_epoch == 10

    # The last epoch was the best, so the saved weights are the final ones; every rank held exactly these.
    assert info["best_val_loss"] == info["history"][-1]["val_loss"]
    saved = weights_digest(load_file(str(tmp_path / "models" / "mlp" / WEIGHTS)))
    assert info["replica_weights_sha256"] == [saved, saved]

    # One writer: one output folder, no leftovers, one summary line and one line per epoch.
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mlp"]
    assert not list((tmp_path / ".work").glob("train/*"))
    assert sum("train@mlp:" in line for line in lines) == 1
    assert sum("mlp: epoch 1/2" in line for line in lines) == 1

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([info["mlflow"]["experiment_id"]])
    children = [run for run in runs if run.data.tags.get("architecture") == "mlp"]
    assert len(runs) == 2, "expected one parent and one child run"
    assert [run.info.run_id for run in children] == [result.run_id]
    assert children[0].info.status == "FINISHED"
    assert children[0].data.params["train.devices"] == "2"
