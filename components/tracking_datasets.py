"""The prepared splits as MLflow dataset inputs, so the UI's Dataset column shows what a model was
trained, validated and tested on.

Metadata only: a name (``<dataset name>-<split>``, e.g. ``npz-mydata-train``), the data version as
digest, the prepared folder as source and the split's tensor shapes as schema; never the arrays, and
no profile computed over them. :meth:`components.tracked_run.TrackedRun.log_inputs` logs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from components.config import Params
from components.naming import dataset_name

if TYPE_CHECKING:
    from components.data.prepared import PreparedData, PreparedSplit

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # split -> MLflow context
DIGEST_CHARS = 36  # the longest dataset digest MLflow stores (MAX_DATASET_DIGEST_SIZE)


def split_inputs(
    params: Params, prepared: PreparedData, folder: Path | str, version: str, splits: Sequence[str]
) -> list[DatasetInput]:
    """One dataset input per split in ``splits`` (prepared split names: ``train``, ``val``, ``test``),
    each with its context (``training``, ``validation``, ``testing``). ``version``: the prepared
    data's version (:func:`components.data.prepared.data_version`)."""
    source = str(Path(folder).resolve())
    return [
        split_input(
            f"{dataset_name(params.data)}-{split}", version, source, CONTEXTS[split], prepared.splits[split]
        )
        for split in splits
    ]


def split_input(name: str, version: str, source: str, context: str, split: PreparedSplit) -> DatasetInput:
    """The dataset input for one split; reads only the arrays' dtypes and shapes. The fields are those
    of ``mlflow.data.meta_dataset.MetaDataset(source, name, digest, schema)`` with a local source."""
    from mlflow.types import Schema, TensorSpec

    schema = Schema(
        [TensorSpec(split.x.dtype, split.x.shape, "x"), TensorSpec(split.y.dtype, split.y.shape, "y")]
    )
    dataset = Dataset(
        name=name,
        digest=version[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": source}),
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
