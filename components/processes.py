"""Which process holds something (an MLflow run, the registry lease), and whether it is gone.

A process is named by its host, pid, start time and (on Linux) pid namespace. The start time tells
a reused pid from the original process; the namespace tells two containers with the same host
name apart. Only a process of this host and namespace can be judged: one elsewhere is never
called gone, so nothing of another machine is ever taken over or marked dead from here.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

# The start time psutil reports is derived from the boot time, which the kernel can report a second
# apart between reads; a pid reused by another process starts far later than that.
_START_TOLERANCE_S = 2.0


@dataclass(frozen=True)
class ProcessRef:
    """One process, as recorded in tags (``<prefix>host``, ``<prefix>pid``, ...)."""

    host: str
    pid: int
    started: float  # Unix time the process started (psutil's create_time)
    namespace: str  # the pid namespace, e.g. "pid:[4026531836]"; "" where there is none to read

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    def tags(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}host": self.host,
            f"{prefix}pid": str(self.pid),
            f"{prefix}started": f"{self.started:.2f}",
            f"{prefix}pid_namespace": self.namespace,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], prefix: str) -> ProcessRef | None:
        """The process recorded under ``prefix``, or None when the tags are missing or unreadable."""
        try:
            return cls(
                host=tags[f"{prefix}host"],
                pid=int(tags[f"{prefix}pid"]),
                started=float(tags[f"{prefix}started"]),
                namespace=tags.get(f"{prefix}pid_namespace", ""),
            )
        except (KeyError, ValueError):
            return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or /proc not mounted
        return ""


_this: dict[int, ProcessRef] = {}  # by pid: a forked child is another process


def this_process() -> ProcessRef:
    """The calling process."""
    pid = os.getpid()
    if pid not in _this:
        started = psutil.Process(pid).create_time()
        _this[pid] = ProcessRef(socket.gethostname(), pid, started, _pid_namespace())
    return _this[pid]


def is_gone(process: ProcessRef) -> bool:
    """True when ``process`` ran on this host (and pid namespace) and no longer runs: its pid is
    free, a zombie (killed, not yet reaped), or another process's. False when it runs, or when it
    ran elsewhere and cannot be judged from here."""
    here = this_process()
    if process.host != here.host or process.namespace != here.namespace:
        return False
    try:
        found = psutil.Process(process.pid)
        if found.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(found.create_time() - process.started) > _START_TOLERANCE_S
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # it exists, owned by another user
        return False


def say(line: str) -> None:
    """One line on stderr, where the stage CLIs and the flow report (not captured by a test's stdout)."""
    print(line, file=sys.stderr, flush=True)
