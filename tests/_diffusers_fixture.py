"""Editable copies of the golden diffusers fixtures (tests/fixtures/autoencoderkl_tiny/ and
autoencoderkl_wan_tiny/, written by scripts/make_*_fixture.py), for the error tests of
test_diffusers_io.py and test_wan_io.py: both directories are a config.json plus the weights."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from seaweed_jax.models.vae import diffusers_io as dio


def fixture_state(fixture: str) -> dict[str, np.ndarray]:
    """The fixture's weights, {diffusers key: array}."""
    return dio.read_safetensors(os.path.join(fixture, dio.WEIGHTS_NAME))


def copy_fixture(fixture: str, tmp_path, state: dict | None = None,
                 config_edit: dict | None = None) -> str:
    """A copy of `fixture` in tmp_path: its config.json updated with `config_edit`, and the
    weights `state` (None: the fixture's own weights file)."""
    d = tmp_path / os.path.basename(fixture)
    d.mkdir()
    dcfg = json.load(open(os.path.join(fixture, "config.json")))
    dcfg.update(config_edit or {})
    (d / "config.json").write_text(json.dumps(dcfg))
    if state is None:
        shutil.copy(os.path.join(fixture, dio.WEIGHTS_NAME), d / dio.WEIGHTS_NAME)
    else:
        dio.write_safetensors(str(d / dio.WEIGHTS_NAME), state)
    return str(d)
