"""Run a stage CLI (``python -m pipelines.<stage>``) in its own process and report how it ended.

Training runs in a process of its own even inside the flow: it seeds and uses process-wide state
(torch's global random generator, deterministic-algorithm switches, one device per process under
DDP), so parallel architectures in one process would change each other's results. The command is
the one ``dvc.yaml`` runs, so the flow's models equal ``dvc repro``'s.

Exit codes follow :mod:`pipelines._cli`: 2 is bad input (:class:`StageRejected`, never retried),
75 a service that did not answer (:class:`StageUnavailable`, worth a retry), anything else a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from components.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, PipelineError, TransientError

_TAIL_LINES = 20


class StageRejected(PipelineError):
    """The stage refused its input (exit code 2)."""


class StageUnavailable(TransientError):
    """The stage could not reach a service it needs (exit code 75)."""


class StageCrashed(RuntimeError):
    """The stage process died (a bug, out of memory, killed)."""


def stage_command(module: str, args: Sequence[str], launcher: Sequence[str] = ()) -> list[str]:
    """``[python, -m, module, *args]``, or ``[*launcher, -m, module, *args]`` (e.g. torchrun)."""
    return [*(launcher or [sys.executable]), "-m", module, *args]


def run_stage_process(
    command: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    name: str = "stage",
) -> None:
    """Run ``command`` in ``cwd``, echoing its output; raise by exit code (see the module docstring)."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    code_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (code_root, os.environ.get("PYTHONPATH", "")) if p)
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            print(f"[{name}] {line}", end="", file=sys.stderr, flush=True)
    code = process.returncode
    if code == 0:
        return
    last = "\n".join(tail)
    if code == EXIT_BAD_INPUT:
        raise StageRejected(f"{name} rejected its input:\n{last}")
    if code == EXIT_TRANSIENT:
        raise StageUnavailable(f"{name} could not reach a service:\n{last}")
    raise StageCrashed(f"{name} exited with code {code}:\n{last}")
