"""The notebooks in colabs/ run top to bottom (nbclient): quickstart writes its samples,
distill compares a teacher and its 4-step student, cascade runs Stage I and the refiner.

The kernel is this interpreter (sys.executable) through a kernelspec written to a temp
JUPYTER_PATH, so the notebook sees the same installed package as the tests.
"""
import json
import os
import sys

import numpy as np
import pytest

nbclient = pytest.importorskip("nbclient", reason="needs the [dev] extra (nbclient)")
nbformat = pytest.importorskip("nbformat", reason="needs the [dev] extra (nbformat)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colabs", "quickstart.ipynb")
KERNEL = "seaweed-jax-test"


def _kernelspec(root) -> str:
    spec_dir = os.path.join(root, "kernels", KERNEL)
    os.makedirs(spec_dir)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "seaweed_jax test kernel", "language": "python"}, f)
    return os.fspath(root)


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_quickstart_notebook_runs_and_writes_samples(tmp_path, monkeypatch):
    pytest.importorskip("ipykernel", reason="needs the [dev] extra (ipykernel)")
    jupyter_path = _kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    monkeypatch.setenv("IPYTHONDIR", os.fspath(tmp_path / "ipython"))   # own history database
    work = tmp_path / "quickstart"
    monkeypatch.setenv("QUICKSTART_DIR", os.fspath(work))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code_cells) >= 6 and all(not c.get("outputs") for c in code_cells), \
        "commit the notebook with its outputs cleared"
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=900,
                                     resources={"metadata": {"path": os.fspath(tmp_path)}})
    client.execute()   # raises CellExecutionError (with the cell's traceback) on any error
    assert _errors(nb) == []

    samples = work / "samples"
    npys = sorted(samples.glob("*.npy"))
    assert [p.name for p in npys] == [f"{i:03d}.npy" for i in range(4)]
    assert len(list(samples.glob("*.mp4"))) == 4
    assert (samples / "contact_sheet.png").stat().st_size > 0
    video = np.load(npys[0])
    assert video.dtype == np.uint8 and video.shape == (17, 32, 32, 3)
    # Each step left its artefacts: VAE latent stats, the latent cache, a DiT checkpoint.
    assert (work / "vae" / "latent_stats.json").exists()
    assert list((work / "data" / "latent_cache").rglob("meta.json"))
    assert (work / "dit" / "config.json").exists()
    # The last cell printed the checker's scores over the 4 prompts.
    last = "".join(o.get("text", "") for o in code_cells[-1].outputs)
    assert "'n': 4" in last, last


def test_distill_notebook_runs_and_compares_nfe(tmp_path, monkeypatch):
    """colabs/distill.ipynb: a tiny teacher, CFG distillation, TSCD into 4 steps, side by side."""
    pytest.importorskip("ipykernel", reason="needs the [dev] extra (ipykernel)")
    monkeypatch.setenv("JUPYTER_PATH", _kernelspec(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", os.fspath(tmp_path / "ipython"))
    work = tmp_path / "distill"
    monkeypatch.setenv("DISTILL_DIR", os.fspath(work))
    monkeypatch.delenv("DISTILL_TEACHER", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(os.path.join(REPO, "colabs", "distill.ipynb"), as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") for c in code_cells), "commit the notebook with its outputs cleared"
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=900,
                                     resources={"metadata": {"path": os.fspath(tmp_path)}})
    client.execute()
    assert _errors(nb) == []
    for run in ("teacher", "distill/cfg", "distill/tscd4"):
        assert (work / run / "config.json").exists(), run
    assert (work / "side_by_side.png").stat().st_size > 0
    last = "".join(o.get("text", "") for o in code_cells[-1].outputs)
    # the teacher's 8 two-pass steps = 16 NFE; the student's 4 one-pass steps = 4 NFE
    assert "'teacher': {'nfe': 16, 'guidance': 'two-pass'" in last, last
    assert "'student': {'nfe': 4, 'guidance': 'embedded'" in last, last


def test_cascade_notebook_runs_stage1_then_the_refiner(tmp_path, monkeypatch):
    """colabs/cascade.ipynb: a tiny VAE, a 16x16 Stage I DiT and a 32x32 refiner; the cascade
    from the command line and from Python, and `sample --input` on a low-resolution file."""
    pytest.importorskip("ipykernel", reason="needs the [dev] extra (ipykernel)")
    monkeypatch.setenv("JUPYTER_PATH", _kernelspec(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", os.fspath(tmp_path / "ipython"))
    work = tmp_path / "cascade"
    monkeypatch.setenv("CASCADE_DIR", os.fspath(work))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(os.path.join(REPO, "colabs", "cascade.ipynb"), as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") for c in code_cells), "commit the notebook with its outputs cleared"
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=900,
                                     resources={"metadata": {"path": os.fspath(tmp_path)}})
    client.execute()
    assert _errors(nb) == []
    assert (work / "vae" / "latent_stats.json").exists()
    for run in ("dit", "refine"):
        assert (work / run / "config.json").exists(), run
    # `sample --workdir --refiner_workdir`: Stage I at 16x16, Stage II at 2x that
    cli = work / "cascade_cli"
    stage1, stage2 = np.load(cli / "stage1" / "000.npy"), np.load(cli / "stage2" / "000.npy")
    assert stage1.dtype == stage2.dtype == np.uint8
    assert stage1.shape == (5, 16, 16, 3) and stage2.shape == (5, 32, 32, 3)
    assert (cli / "side_by_side.png").stat().st_size > 0
    # `sample --refiner_workdir --input=low_res/clip.mp4`: <stem>.npy / .mp4
    refined = np.load(work / "refined" / "clip.npy")
    assert refined.dtype == np.uint8 and refined.shape == (5, 32, 32, 3)
    assert (work / "refined" / "clip.mp4").stat().st_size > 0
    last = "".join(o.get("text", "") for o in code_cells[-1].outputs)
    assert "'stage1': (5, 16, 16, 3), 'stage2': (5, 32, 32, 3), 'refined_input': (5, 32, 32, 3)" in last, last
    # Stage I: 4 Euler steps with two-pass CFG = 8 NFE; the refiner: 4 one-call steps
    assert "'stage1_nfe': 8, 'refine_nfe': 4, 'total_nfe': 12" in last, last
