"""Preprocess stage for text: stratified splits as for images, a tokenizer fitted on train only.

Output folder::

    data/prepared/
      train.safetensors, val.safetensors, test.safetensors
          x             (N, L) int64 token ids, right-padded with [PAD] = 0 ([UNK] = 1)
          lengths       (N,) int64 real tokens after truncation (>= 1)
          y             (N, K) float32 one-hot labels
          labels        (N,) int64 class ids
          source_index  (N,) int64 position in the raw split the text came from
          text_bytes, text_offsets  the raw texts (components.data.text_raw), for the error report
                        and the registered model's checks on raw strings
      tokenizer.json    the Hugging Face tokenizer, fitted on the train split only
      stats.json        TextStats: class names, vocabulary size, L, pad/unk ids
      manifest.json     params, raw manifest hash, tokenizer/stats sha256, per split: file sha256,
                        count, class counts, tokens, [UNK] tokens, OOV rate, truncated texts and
                        truncation rate

Splits: a raw ``val`` split (a ``dev.*`` file) is kept with ``train`` and ``test``; otherwise they
are drawn by :func:`~components.data.preprocess.plan_splits` like images. OOV rate: share of a
split's tokens (before truncation) mapped to ``[UNK]``; truncation rate: share of its texts with
more than L tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from components.atomic import atomic_directory, atomic_write_json, atomic_write_text
from components.config import PreprocessParams
from components.data.manifest import MANIFEST, STATS, TOKENIZER
from components.data.preprocess import SPLITS, SplitPlan, check_class_coverage, plan_splits
from components.data.tensorfile import save_arrays
from components.data.text_raw import pack_texts, read_text_split
from components.data.text_stats import TextStats
from components.data.tokenize import PAD_ID, UNK_ID, fit_tokenizer, pad, token_ids, tokenizer_json
from components.hashing import sha256_file

FORMAT_VERSION = 1


def _plan(
    raw_labels: dict[str, np.ndarray], params: PreprocessParams, files: dict[str, Path]
) -> dict[str, SplitPlan]:
    """The source's own train/val/test when it has all three, else :func:`plan_splits`."""
    if set(raw_labels) == set(SPLITS):
        return {split: SplitPlan(split, np.arange(len(raw_labels[split]))) for split in SPLITS}
    return plan_splits(raw_labels, params, files)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _write_split(
    file: Path,
    tokenizer: Tokenizer,
    texts: list[str],
    labels: np.ndarray,
    index: np.ndarray,
    num_classes: int,
    max_length: int,
) -> dict[str, Any]:
    """Encode ``texts`` and write one split to ``file``; return its manifest entry."""
    ids = token_ids(tokenizer, texts)
    x, lengths = pad(ids, max_length)  # (N, L), (N,)
    tokens = sum(len(row) for row in ids)
    unknown = sum(row.count(UNK_ID) for row in ids)
    truncated = sum(len(row) > max_length for row in ids)
    one_hot = np.eye(num_classes, dtype=np.float32)  # (K, K)
    text_bytes, text_offsets = pack_texts(texts)
    save_arrays(
        file,
        {
            "x": x,
            "lengths": lengths,
            "y": one_hot[labels],  # (N, K)
            "labels": labels.astype(np.int64),
            "source_index": index.astype(np.int64),
            "text_bytes": text_bytes,
            "text_offsets": text_offsets,
        },
    )
    return {
        "file": file.name,
        "sha256": sha256_file(file),
        "count": len(texts),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "tokens": tokens,
        "unk_tokens": unknown,
        "oov_rate": _rate(unknown, tokens),
        "truncated": truncated,
        "truncation_rate": _rate(truncated, len(texts)),
    }


def preprocess_text(
    params: PreprocessParams, raw_dir: Path, out_dir: Path | str, raw_manifest: dict[str, Any]
) -> dict[str, Any]:
    """Split, tokenise and one-hot the raw text splits of ``raw_dir`` into ``out_dir`` (replaced
    only on success); ``raw_manifest`` is ``raw_dir``'s manifest, already checked."""
    files = {name: raw_dir / entry["file"] for name, entry in raw_manifest["splits"].items()}
    raw = {name: read_text_split(file) for name, file in files.items()}  # (texts, labels)
    class_names = list(raw_manifest["class_names"])
    plan = _plan({name: labels for name, (_, labels) in raw.items()}, params, files)
    origin_files = {split: files[plan[split].origin] for split in SPLITS}
    labels = {split: raw[plan[split].origin][1][plan[split].indices] for split in SPLITS}
    check_class_coverage(labels, class_names, origin_files)
    texts = {split: [raw[plan[split].origin][0][i] for i in plan[split].indices.tolist()] for split in SPLITS}

    tokenizer = fit_tokenizer(texts["train"], params.text.vocab_size)
    stats = TextStats(
        class_names=class_names,
        source=raw_manifest["source"],
        vocab_size=tokenizer.get_vocab_size(),
        max_length=params.text.max_length,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
    )
    with atomic_directory(out_dir) as tmp:
        entries: dict[str, Any] = {}
        for split in SPLITS:
            file = tmp / f"{split}.safetensors"
            entry = _write_split(
                file,
                tokenizer,
                texts[split],
                labels[split],
                plan[split].indices,
                len(class_names),
                stats.max_length,
            )
            entries[split] = {**entry, "origin": plan[split].origin}
        atomic_write_text(tmp / TOKENIZER, tokenizer_json(tokenizer))
        atomic_write_text(tmp / STATS, stats.to_json())
        manifest = {
            "stage": "preprocess",
            "format": FORMAT_VERSION,
            "kind": "text",
            "source": raw_manifest["source"],
            "num_classes": len(class_names),
            "class_names": class_names,
            "vocab_size": stats.vocab_size,
            "max_length": stats.max_length,
            "params": params.model_dump(),
            "raw_manifest_sha256": sha256_file(raw_dir / MANIFEST),
            "stats_sha256": sha256_file(tmp / STATS),
            "tokenizer_sha256": sha256_file(tmp / TOKENIZER),
            "splits": entries,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
