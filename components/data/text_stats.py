"""``stats.json`` of prepared text data: what a consumer needs besides ``tokenizer.json``.

The counterpart of :class:`~components.data.normalize.Normalization` for token input: the class
names, the tokenizer's real vocabulary size and the sequence length every split is padded to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from components.atomic import dumps_json
from components.errors import DataValidationError


@dataclass(frozen=True)
class TextStats:
    """Prepared text data's shape and vocabulary (``stats.json`` with ``"kind": "text"``)."""

    class_names: list[str]
    """Class id -> name."""
    source: str
    """``data.source`` the data came from."""
    vocab_size: int
    """Tokens in ``tokenizer.json``'s vocabulary, ``[PAD]`` and ``[UNK]`` included (at most
    ``preprocess.text.vocab_size``): the size of an embedding table."""
    max_length: int
    """L: token ids per text, right-padded with ``pad_id``."""
    pad_id: int = 0
    unk_id: int = 1
    kind: Literal["text"] = "text"

    @property
    def input_shape(self) -> list[int]:
        """Shape of one model input: ``[max_length]`` token ids."""
        return [self.max_length]

    def to_json(self) -> str:
        return dumps_json(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextStats:
        """Inverse of :meth:`to_json`; ``TypeError`` when ``data`` is not such an object."""
        if not isinstance(data, dict) or data.get("kind") != "text":
            raise TypeError('expected a JSON object with "kind": "text"')
        stats = cls(**data)
        numbers = (stats.vocab_size, stats.max_length, stats.pad_id, stats.unk_id)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise TypeError("vocab_size, max_length, pad_id and unk_id must be non-negative integers")
        return stats

    @classmethod
    def load(cls, path: Path | str) -> TextStats:
        """Read a ``stats.json``; a missing, unreadable or malformed file is a
        :class:`DataValidationError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise DataValidationError(path, "text statistics file not found (run the preprocess stage)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataValidationError(path, "text statistics file is not valid JSON", str(exc)) from None
        except TypeError as exc:
            raise DataValidationError(
                path, "must hold the text statistics written by preprocess", str(exc)
            ) from None
