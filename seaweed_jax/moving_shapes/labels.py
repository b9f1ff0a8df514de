"""moving_shapes labels and captions: the tables every other module reads (renderer, prompt
checker, prompt generators, tests).

A leaf module (stdlib + numpy only), so code that needs only names and captions never imports
TFDS. Tuple order is the ClassLabel index order stored in built datasets: never reorder.
"""
from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "orange": (255, 165, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "navy": (0, 0, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
# (drow, dcol) unit step of each direction in image coordinates.
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "still": (0, 0)}

# The names of each int label of a built example (its ClassLabel features).
_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES, "shape": SHAPES, "direction": DIRECTIONS,
    "background": BACKGROUND_NAMES}


def label_name(key: str, index: int) -> str:
    """The name of int label `index` of attribute `key` ('color', 'shape', 'direction' or
    'background'), e.g. label_name('color', 0) == 'red'."""
    if key not in _LABEL_NAMES:
        raise ValueError(f"unknown label {key!r}; expected one of {tuple(_LABEL_NAMES)}")
    return _LABEL_NAMES[key][int(index)]


def canonical_caption(color: str, shape: str, direction: str, background: str) -> str:
    """'a red circle moving left on a black background' / '... standing still on ...'."""
    motion = "standing still" if direction == "still" else f"moving {direction}"
    return f"a {color} {shape} {motion} on a {background} background"


# Paraphrases use the same vocabulary words, so a prompt checker can parse every caption.
MOVING_PARAPHRASES: tuple[str, ...] = (
    "a {color} {shape} moves {direction} across a {background} background",
    "{color} {shape} moving {direction}, {background} background",
    "a {color} {shape} on a {background} background, moving {direction}",
    "a {background} background with a {color} {shape} moving {direction}",
)
STILL_PARAPHRASES: tuple[str, ...] = (
    "a {color} {shape} stays still on a {background} background",
    "a still {color} {shape} on a {background} background",
    "a {background} background with a {color} {shape} standing still",
)


def canonical_prompts(n: int, seed: int, video: bool = True) -> list[str]:
    """N canonical moving_shapes captions with labels drawn uniformly with `seed`."""
    rng = np.random.default_rng([seed, 7919])
    out = []
    for _ in range(n):
        out.append(canonical_caption(
            color=COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
            shape=SHAPES[rng.integers(len(SHAPES))],
            direction=DIRECTIONS[rng.integers(len(DIRECTIONS))] if video else "still",
            background=BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))]))
    return out
