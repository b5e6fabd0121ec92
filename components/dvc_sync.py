"""Keep DVC's record true when stages run outside ``dvc repro`` (the Prefect flow).

The flow runs the same component functions as the ``dvc.yaml`` stages. Around each stage it asks
DVC two questions:

- **before**: is the stage up to date (``dvc status <stage>`` empty)? Then it is skipped, as
  ``dvc repro`` would skip it.
- **after** it ran: record it with ``dvc commit <stage>``, which hashes the stage's deps and outs
  into ``dvc.lock`` (and the cache) exactly as ``dvc repro`` does after running the command. So
  ``dvc status`` is clean afterwards and a ``dvc repro`` right after does nothing.

A stage whose settings differ from ``params.yaml`` (flow-parameter overrides of keys the stage
reads, or of any stage upstream of it) is *detached*: it always runs and is never committed, since
``dvc.lock`` describes ``params.yaml``. DVC's own repository lock guards against other processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params, flatten, load_params
from components.errors import ProjectSetupError

PARAMS_FILE = "params.yaml"


def changed_keys(effective: Params, project_root: Path | str) -> frozenset[str]:
    """Dotted keys whose value differs between ``effective`` and the project's ``params.yaml``."""
    recorded = flatten(load_params(Path(project_root) / PARAMS_FILE).model_dump(mode="json"))
    current = flatten(effective.model_dump(mode="json"))
    return frozenset(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))


def _overlaps(key: str, tracked: str) -> bool:
    """``train.seed`` overlaps ``train`` and ``train.seed``; ``models.cnn.x`` overlaps ``models.cnn``."""
    return key == tracked or key.startswith(f"{tracked}.") or tracked.startswith(f"{key}.")


@dataclass(frozen=True)
class DvcStages:
    """The project's DVC pipeline, seen from one flow run with the given changed keys."""

    root: Path
    changed: frozenset[str]

    @classmethod
    def open(cls, project_root: Path | str, effective: Params) -> DvcStages | None:
        """None when the project has no DVC pipeline (then every stage simply runs).

        DVC is opened once here, so a project it cannot open stops the run before any stage, with
        a :class:`ProjectSetupError` rather than a traceback from the first task.
        """
        root = Path(project_root).resolve()
        if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
            return None
        with _open_repo(root):
            pass
        return cls(root, changed_keys(effective, root))

    def _repo(self) -> Any:
        return _open_repo(self.root)

    def _target(self, stage: str) -> str:
        """An absolute ``dvc.yaml:stage`` target: DVC resolves bare stage names against the cwd."""
        return f"{self.root / 'dvc.yaml'}:{stage}"

    def detached(self, stage: str) -> bool:
        """Whether ``stage`` or a stage upstream of it reads a key that differs from ``params.yaml``."""
        if not self.changed:
            return False
        import networkx as nx

        with self._repo() as repo:
            graph = repo.index.graph
            by_name = {s.name: s for s in graph.nodes if s.dvcfile.path == str(self.root / "dvc.yaml")}
            if stage not in by_name:
                return True
            node = by_name[stage]
            # The graph's edges point from a stage to the stages it depends on.
            upstream = nx.descendants(graph, node) | {node}
            tracked = [key for s in upstream for key in _tracked_params(s)]
        return any(_overlaps(key, t) for key in self.changed for t in tracked)

    def up_to_date(self, stage: str) -> bool:
        """``dvc status <stage>`` reports nothing to do (and the stage follows ``params.yaml``)."""
        if self.detached(stage):
            return False
        with self._repo() as repo:
            return not repo.status(targets=[self._target(stage)])

    def record(self, stage: str) -> bool:
        """``dvc commit --force <stage>`` unless detached; return whether it was recorded."""
        if self.detached(stage):
            return False
        with self._repo() as repo:
            repo.commit(self._target(stage), force=True)
        return True


def _open_repo(root: Path) -> Any:
    """DVC's ``Repo`` for ``root``; a folder that is not a git checkout (a copy without ``.git``,
    such as the training image) is a :class:`ProjectSetupError` naming both ways out."""
    from dvc.repo import Repo
    from dvc.scm import SCMError

    try:
        return Repo(str(root))
    except SCMError as exc:
        raise ProjectSetupError(
            f"{root}: DVC cannot open the project ({exc}): DVC needs a git checkout unless its setting "
            "core.no_scm is true; clone the project with git, or run `dvc config --local core.no_scm "
            "true` in that folder (the training image does)"
        ) from None


def _tracked_params(stage: Any) -> Iterable[str]:
    for dep in stage.deps:
        params = getattr(dep, "params", None)
        if params is None:
            continue
        yield from params.keys() if isinstance(params, Mapping) else params


def run_unless_up_to_date(dvc: DvcStages | None, stage: str, body: Callable[[], object]) -> bool:
    """Run ``body`` unless DVC reports ``stage`` up to date; record it in ``dvc.lock`` after.

    Returns whether the stage ran. Without a DVC pipeline (``dvc`` None) the stage always runs.
    """
    if dvc is not None and dvc.up_to_date(stage):
        return False
    body()
    if dvc is not None:
        dvc.record(stage)
    return True
