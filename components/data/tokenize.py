"""The word-level tokenizer of text data, and :func:`encode`, the one text -> ids function.

Preprocessing fits the tokenizer on the train split and encodes every split with :func:`encode`;
the registered model and ``predict`` encode raw strings with the same function and the saved
``tokenizer.json``, so a model always sees the ids it was trained on. This module needs only
``tokenizers`` and NumPy.

The tokenizer (Hugging Face ``tokenizers``): NFKC then lower-case normalisation, split on
whitespace and on each punctuation character, a word-level vocabulary of the most frequent train
words (ties in alphabetical order). ``[PAD]`` is id 0 and ``[UNK]`` id 1; they are vocabulary
entries only, not added tokens, so a text holding the characters ``[PAD]`` is split like any other
text rather than read as padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1


def _tokenizer(vocab: dict[str, int] | None) -> Tokenizer:
    """A word-level tokenizer with the pipeline's normalizer and pre-tokenizer."""
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK) if vocab is not None else WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return tokenizer


def fit_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A tokenizer whose vocabulary is ``[PAD]``, ``[UNK]`` and the ``vocab_size - 2`` most frequent
    words of ``texts`` (all of them when fewer); the same texts give the same vocabulary."""
    trainer = WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    trained = _tokenizer(None)
    trained.train_from_iterator(texts, trainer=trainer)
    vocab = trained.get_vocab(with_added_tokens=False)
    if vocab.get(PAD) != PAD_ID or vocab.get(UNK) != UNK_ID:  # the trainer puts specials first
        raise RuntimeError(f"tokenizers placed {PAD}/{UNK} at {vocab.get(PAD)}/{vocab.get(UNK)}, not 0/1")
    return _tokenizer(vocab)  # the same vocabulary, without the specials as added tokens


def load_tokenizer(path: Path | str) -> Tokenizer:
    """A ``tokenizer.json`` written by preprocessing."""
    return Tokenizer.from_file(str(path))


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The serialisation saved as ``tokenizer.json`` (stable: the vocabulary in id order)."""
    return str(tokenizer.to_str(pretty=True)) + "\n"


def token_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Every token id of each text, before truncation."""
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def pad(ids: list[list[int]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, max_length) int64 right-padded with ``PAD_ID``, lengths (N,) int64): each text cut
    to its first ``max_length`` tokens; one with no token at all becomes a single ``[UNK]``, so every
    row has at least one real token."""
    x = np.full((len(ids), max_length), PAD_ID, dtype=np.int64)  # (N, L)
    lengths = np.zeros(len(ids), dtype=np.int64)  # (N,)
    for row, tokens in enumerate(ids):
        kept = tokens[:max_length] or [UNK_ID]
        x[row, : len(kept)] = kept
        lengths[row] = len(kept)
    return x, lengths


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``texts`` -> (ids (N, max_length) int64 right-padded with 0, lengths (N,) int64 >= 1)."""
    return pad(token_ids(tokenizer, texts), max_length)
