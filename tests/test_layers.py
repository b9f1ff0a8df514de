"""The import-layering contract of seaweed_jax (see tests/_imports.py for the layer table).

The real tree is parsed, never imported. The negative tests run the same checker on a
synthetic `seaweed_jax` package in tmp_path to prove each rule fails when it is broken.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from _imports import check

PKG_DIR = Path(__file__).resolve().parents[1] / "seaweed_jax"


@pytest.fixture(scope="module")
def real():
    return check(PKG_DIR)


@pytest.mark.parametrize("kind", ["layers", "cycles", "lazy"])
def test_real_tree(real, kind):
    if real[kind]:
        pytest.fail(f"{len(real[kind])} {kind} violation(s):\n" + "\n".join(real[kind]), pytrace=False)


# ----------------------------------------------------------------------------- negative tests
def make_pkg(tmp_path, files: dict[str, str]) -> Path:
    """Writes a synthetic seaweed_jax package (every directory gets an __init__.py)."""
    pkg = tmp_path / "seaweed_jax"
    for rel, src in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for d in [path.parent, *path.parent.relative_to(pkg).parents]:
            (pkg / d / "__init__.py").touch()
        path.write_text(textwrap.dedent(src))
    return pkg


def test_clean_synthetic_package_passes(tmp_path):
    pkg = make_pkg(tmp_path, {
        "config_lib.py": "import os\n",
        "data/pipeline.py": "from seaweed_jax import config_lib\nfrom ..parallel import mesh\n",
        "parallel/mesh.py": "import numpy as np\n",
        "models/vae.py": "from seaweed_jax.data import pipeline\nfrom . import dit\n",
        "models/dit.py": "from seaweed_jax.data.pipeline import x\n",
        "train.py": "from seaweed_jax.models import vae\n",
    })
    assert check(pkg) == {"layers": [], "cycles": [], "lazy": []}


def test_upward_import_is_reported(tmp_path):
    pkg = make_pkg(tmp_path, {
        "data/pipeline.py": "import os\n\nfrom seaweed_jax.models import vae\n",
        "models/vae.py": "",
    })
    (msg,) = check(pkg)["layers"]
    assert msg == (
        "seaweed_jax/data/pipeline.py:3: seaweed_jax.data.pipeline (layer 5, seaweed_jax.data) "
        "imports seaweed_jax.models.vae (layer 6, seaweed_jax.models): move the shared code down "
        "to layer 5 or invert the dependency")


def test_relative_upward_import_is_reported(tmp_path):
    pkg = make_pkg(tmp_path, {"data/pipeline.py": "from ..models.vae import Model\n",
                              "models/vae.py": ""})
    (msg,) = check(pkg)["layers"]
    assert "imports seaweed_jax.models.vae (layer 6" in msg


def test_cli_modules_must_not_import_each_other(tmp_path):
    pkg = make_pkg(tmp_path, {"train.py": "", "sample.py": "from seaweed_jax.train import main\n"})
    (msg,) = check(pkg)["layers"]
    assert "seaweed_jax.sample (layer 10" in msg and "imports seaweed_jax.train (layer 10" in msg
    assert "CLI modules must not import each other" in msg


def test_two_module_cycle_is_reported(tmp_path):
    pkg = make_pkg(tmp_path, {
        "data/a.py": "from seaweed_jax.data import b\n",
        "data/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from seaweed_jax.data.a import A\n",
    })
    problems = check(pkg)
    assert problems["layers"] == [] and problems["lazy"] == []
    assert problems["cycles"] == [
        "module import cycle: seaweed_jax.data.a -> seaweed_jax.data.b -> seaweed_jax.data.a: "
        "break it by moving the shared code into a lower module"]


def test_package_cycle_is_reported(tmp_path):
    pkg = make_pkg(tmp_path, {
        "models/vae/enc.py": "from seaweed_jax.models.dit import rope\n",
        "models/dit/rope.py": "",
        "models/dit/block.py": "from seaweed_jax.models.vae.dec import f\n",
        "models/vae/dec.py": "",
    })
    assert check(pkg)["cycles"] == [
        "package import cycle: seaweed_jax.models.dit -> seaweed_jax.models.vae -> "
        "seaweed_jax.models.dit: break it by moving the shared code into a lower module"]


def test_function_body_import_needs_lazy_comment(tmp_path):
    pkg = make_pkg(tmp_path, {"data/video_io.py": """\
        import numpy as np


        def read(path):
            import av
            return av.open(path)


        def write(path):
            import av  # lazy: optional dependency
            return av.open(path, "w")


        class Writer:
            def gif(self):
                # lazy: Pillow only for GIFs
                from PIL import Image
                return Image

            def mp4(self):
                from seaweed_jax.parallel import mesh  # lazy:
                return mesh
        """, "parallel/mesh.py": ""})
    assert check(pkg)["lazy"] == [
        "seaweed_jax/data/video_io.py:5: import av",
        "seaweed_jax/data/video_io.py:21: from seaweed_jax.parallel import mesh",  # empty reason
    ]


def test_unknown_top_level_module_is_reported(tmp_path):
    pkg = make_pkg(tmp_path, {"utils/misc.py": "", "data/pipeline.py": "from ..utils import misc\n"})
    problems = check(pkg)["layers"]
    assert problems == [
        "seaweed_jax/utils/__init__.py: module seaweed_jax.utils is not in the layer table: add it "
        "(or its top-level package) to LAYERS in tests/_imports.py",
        "seaweed_jax/utils/misc.py: module seaweed_jax.utils.misc is not in the layer table: add "
        "it (or its top-level package) to LAYERS in tests/_imports.py",
    ]


def test_every_package_directory_has_an_init():
    """setup.py's find_packages skips a directory without __init__.py: an install that is not
    editable would then miss it (seaweed_jax/inference/ once did)."""
    missing = [str(d.relative_to(PKG_DIR.parent)) for d in [PKG_DIR, *PKG_DIR.rglob("*")]
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
               and not (d / "__init__.py").exists()]
    assert not missing, f"add an __init__.py to {missing}"
