"""A fixed word-level tokenizer (host side, numpy; no downloads).

The vocabulary is code: special tokens, every word of the moving_shapes captions (its
colours, backgrounds, shapes, directions and caption templates) and a few hundred common
English words. Ids are stable across runs and machines, so a workdir only needs to record
`WordTokenizer.name` (and `max_len`) to rebuild the exact tokenizer.

Text is lower-cased and split into runs of letters/digits; punctuation is dropped. Unknown
words map to <unk>. Every sequence ends with <eos> (kept even when the text is truncated),
so the empty prompt is `[<eos>]`: no row is all padding, and attention never sees a query
with no valid key.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from seaweed_jax.data.moving_shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2

# Words of the moving_shapes caption templates (canonical and paraphrased).
_CAPTION_WORDS = ("a", "an", "the", "moving", "moves", "standing", "stands", "still",
                  "stays", "on", "across", "with", "background")

# Common English words, so prompts outside the toy captions still tokenize mostly to real
# ids (the tiny encoder learns only what its training data contains).
_COMMON_WORDS = """
of and to in is it that for as was with be by at this from or are not but have has had
he she they we you i his her their its our your them him me us my who what which when where
why how all any both each few more most other some such no nor only own same so than too
very can will just should now then there here up down left right out over under again
further once into through during before after above below between off around along
toward towards away back forward front behind near far inside outside top bottom middle
center centre side corner edge one two three four five six seven eight nine ten many
much little big large small tiny huge long short tall wide narrow thin thick round flat
fast slow slowly quickly quick steady steadily smooth smoothly gently straight
move move moving moved motion slide slides sliding glide glides gliding drift drifts
drifting travel travels traveling travelling go goes going come comes coming rise rises
rising fall falls falling float floats floating bounce bounces bouncing spin spins
spinning rotate rotates rotating stay stays stand stands still static stationary
motionless frozen pause paused stop stops stopped remain remains remaining sit sits
shape shapes object objects thing ball box block dot spot disk disc ring star heart
rectangle oval diamond pyramid cube sphere line lines point pixel pixels image picture
photo video clip frame frames scene view shot animation animated cartoon simple plain
solid bright dark light pale deep vivid colorful colourful color colour colored coloured
black white gray grey red green blue yellow orange purple pink brown cyan magenta navy
violet gold golden silver teal lime maroon olive beige turquoise indigo
sky sea water ground floor wall field space room screen canvas surface backdrop
uniform empty blank clean high low quality detailed realistic beautiful nice good bad
new old first last next while across onto upon against within without per
sun moon car person man woman dog cat bird tree house street city road
""".split()


def _dedupe(words: Iterable[str]) -> tuple[str, ...]:
    seen, out = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return tuple(out)


def default_vocabulary() -> tuple[str, ...]:
    """The fixed vocabulary: specials first, then the toy dataset's words, then common words."""
    dataset_words = [*COLORS, *BACKGROUNDS, *SHAPES, *DIRECTIONS, *_CAPTION_WORDS]
    return _dedupe([*SPECIAL_TOKENS, *dataset_words, *_COMMON_WORDS])


_WORD_RE = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Fixed-vocabulary word tokenizer: `tokenize(texts, max_len) -> (ids, mask)`."""

    name = "seaweed_word_v1"   # bump when the vocabulary or the splitting rule changes

    def __init__(self, vocabulary: Sequence[str] | None = None):
        vocab = tuple(vocabulary) if vocabulary is not None else default_vocabulary()
        if vocab[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has duplicate words")
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


_DEFAULT: list = []


def _default() -> WordTokenizer:
    if not _DEFAULT:
        _DEFAULT.append(WordTokenizer())
    return _DEFAULT[0]
