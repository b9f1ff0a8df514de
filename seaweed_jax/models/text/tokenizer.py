"""A fixed word-level tokenizer (host side, numpy; no downloads).

The vocabulary is a frozen literal picked by name from `vocabulary.VOCABULARIES` (special
tokens, every word of the moving_shapes captions and a few hundred common English words). Ids
are stable across runs and machines, so a workdir only needs to record `WordTokenizer.name`
(and `max_len`) to rebuild the exact tokenizer.

Text is lower-cased and split into runs of letters/digits; punctuation is dropped. Unknown
words map to <unk>. Every sequence ends with <eos> (kept even when the text is truncated),
so the empty prompt is `[<eos>]`: no row is all padding, and attention never sees a query
with no valid key.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

import numpy as np

from seaweed_jax.models.text import vocabulary

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2

_WORD_RE = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Fixed-vocabulary word tokenizer: `tokenize(texts, max_len) -> (ids, mask)`.

    `name` picks the vocabulary in `vocabulary.VOCABULARIES` (and is what runs record); the
    splitting rule is part of every name, so changing it also needs a new name.
    """

    def __init__(self, name: str = vocabulary.DEFAULT):
        if name not in vocabulary.VOCABULARIES:
            raise ValueError(f"unknown tokenizer vocabulary {name!r}; known vocabularies: "
                             f"{sorted(vocabulary.VOCABULARIES)}")
        vocab = tuple(vocabulary.VOCABULARIES[name])
        if vocab[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary {name!r} must start with {SPECIAL_TOKENS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError(f"vocabulary {name!r} has duplicate words")
        self.name = name
        self.vocabulary = vocab
        self._index = {w: i for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        """Word ids of one text followed by <eos> (no padding, no truncation)."""
        return [self._index.get(w, UNK_ID) for w in split_words(text)] + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in map(int, ids):
            if i == EOS_ID:
                break
            if i != PAD_ID:
                words.append(self.vocabulary[i])
        return " ".join(words)

    def tokenize(self, texts: Sequence[str] | str, max_len: int):
        """(ids int32 (B, max_len), mask bool (B, max_len)); True marks real tokens (words and
        <eos>). Longer texts keep their first max_len - 1 words and the <eos>."""
        if isinstance(texts, str):
            texts = [texts]
        if max_len < 1:
            raise ValueError(f"max_len={max_len} must be >= 1")
        ids = np.full((len(texts), max_len), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            tok = self.encode(text)
            if len(tok) > max_len:
                tok = tok[:max_len - 1] + [EOS_ID]
            ids[row, :len(tok)] = tok
        return ids, ids != PAD_ID

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` that map to <unk> (for warnings in CLIs)."""
        return [w for w in split_words(text) if w not in self._index]


def tokenize(texts: Sequence[str] | str, max_len: int):
    """`WordTokenizer().tokenize` with the default vocabulary."""
    return _default().tokenize(texts, max_len)


@functools.cache
def _default() -> WordTokenizer:
    return WordTokenizer()
