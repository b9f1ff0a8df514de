"""Everything specific to the `moving_shapes` toy dataset, in one place.

`labels` (leaf: names, RGB tables, captions, canonical prompts), `builder` (the TFDS builder
and renderer) and `checker` (reads colour / shape / direction back from pixels). Import the
submodule you need: this package imports nothing, so `labels` stays free of TFDS.
"""
