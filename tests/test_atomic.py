"""Concurrent writers of one output folder: each swap is whole, and no writer deletes another's
work in progress."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from components.atomic import atomic_directory


def _write(target: str, tag: str, files: int, pause: float) -> None:
    with atomic_directory(target) as tmp:
        for i in range(files):
            (tmp / f"{i}.txt").write_text(tag)
            time.sleep(pause)


def test_concurrent_writers_never_mix_versions(tmp_path: Path) -> None:
    """Four processes write the same folder at once: all succeed, and the result is one writer's
    complete output, with no temporary sibling left."""
    target = tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write, args=(str(target), f"writer{i}", 20, 0.005)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    texts = {p.read_text() for p in target.iterdir()}
    assert len(texts) == 1, texts
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{i}.txt" for i in range(20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_writer_that_starts_later_keeps_a_running_writers_temp_folder(tmp_path: Path) -> None:
    """Recovery clears temp folders of dead writers only: a slow writer still finishes."""
    target = tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    slow = context.Process(target=_write, args=(str(target), "slow", 10, 0.1))
    slow.start()
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "slow writer never started"
        time.sleep(0.01)
    _write(str(target), "fast", 3, 0.0)
    slow.join(timeout=60)
    assert slow.exitcode == 0
    assert {p.read_text() for p in target.iterdir()} == {"slow"}
    assert len(list(target.iterdir())) == 10
