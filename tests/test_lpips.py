"""LPIPS ('vgg', v0.1) in Flax (seaweed_jax/eval/lpips.py) and its converter (scripts/convert_lpips.py).

The golden fixture tests/fixtures/lpips_tiny/ was written by the REAL `lpips` package 0.1.4
(scripts/make_lpips_fixture.py, torch 2.14.1 CPU, torchvision 0.29.1): the package's own
LPIPS.forward on a narrow VGG16 (widths 4, 6, 8, 12, 16, torchvision's layer layout) with random
weights; `expected.npz` holds its inputs and distances. `lpips_tiny.npz` is our converter's output
for the two .pth files; it is committed because this env has no torch. The .pth -> .npz
conversion is checked against it where torch is importable (skipped otherwise); the converter's
numpy mapping is tested here without torch. Negative controls show the parity check catches a
missing unit normalization, missing input scaling, flipped kernels and permuted heads.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.eval import lpips as lp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "lpips_tiny")
WEIGHTS = os.path.join(FIXTURE, "lpips_tiny.npz")
WIDTHS = (4, 6, 8, 12, 16)
TOL = 1e-4

_spec = importlib.util.spec_from_file_location("convert_lpips",
                                               os.path.join(REPO, "scripts", "convert_lpips.py"))
convert_lpips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_lpips)

lpips_jit = jax.jit(lp.lpips, static_argnames=("dtype", "per_frame"))


@pytest.fixture(scope="module")
def params():
    return lp.load(WEIGHTS)


@pytest.fixture(scope="module")
def golden():
    e = np.load(os.path.join(FIXTURE, "expected.npz"))
    nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731  torch NCHW -> our NHWC
    return nhwc(e["x"]), nhwc(e["y"]), e["d"], e["per_layer"]


def _arrays():
    with np.load(WEIGHTS) as z:
        return {k: z[k] for k in z.files}


def _write(tmp_path, arrays, name="w.npz"):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ----------------------------------------------------------------------------- parity

def test_parity_with_the_lpips_package(params, golden):
    x, y, d, per_layer = golden
    assert lp.widths_of(params) == WIDTHS
    np.testing.assert_allclose(per_layer.sum(1), d, atol=1e-6)   # the fixture is self-consistent
    assert d[2] == 0 and min(d[[0, 1, 3]]) > 0.04                 # identical pair; others clearly apart
    got = np.asarray(lpips_jit(params, x, y))
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, d, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(lp.lpips(params, x, y)), d, atol=TOL, rtol=0)   # eager too


def test_identical_inputs_give_exactly_zero(params, golden):
    x, y, _, _ = golden
    for fn in (lp.lpips, lpips_jit):
        assert np.all(np.asarray(fn(params, x, x)) == 0)
        assert np.all(np.asarray(fn(params, x, x.copy())) == 0)
    got = np.asarray(lpips_jit(params, x, y))
    assert got[2] == 0 and np.all(got[[0, 1, 3]] > 0)  # only the identical pair of the batch is 0


def test_symmetric(params, golden):
    x, y, _, _ = golden
    np.testing.assert_allclose(np.asarray(lpips_jit(params, y, x)), np.asarray(lpips_jit(params, x, y)),
                               rtol=1e-6, atol=1e-9)


def _flip_kernels(p):
    return {**p, "vgg": {k: {**v, "kernel": v["kernel"][::-1, ::-1]} for k, v in p["vgg"].items()}}


def _reverse_heads(p):
    return {**p, **{f"lin{l}": {"kernel": p[f"lin{l}"]["kernel"][::-1]} for l in range(5)}}


@pytest.mark.parametrize("break_it", ["no_unit_norm", "no_input_scaling", "flipped_kernels",
                                      "reversed_heads"])
def test_negative_controls_fail_parity(params, golden, monkeypatch, break_it):
    """Each plausible mistake moves some distance by far more than TOL (eager calls: the
    monkeypatched module globals are read at trace time)."""
    x, y, d, _ = golden
    p = params
    if break_it == "no_unit_norm":
        monkeypatch.setattr(lp, "unit_normalize", lambda f: f.astype(jnp.float32))
    elif break_it == "no_input_scaling":          # lpips version 0.0 (the package's old bug)
        monkeypatch.setattr(lp, "SHIFT", (0.0, 0.0, 0.0))
        monkeypatch.setattr(lp, "SCALE", (1.0, 1.0, 1.0))
    elif break_it == "flipped_kernels":           # a torch OIHW -> HWIO mix-up that keeps shapes
        p = _flip_kernels(params)
    else:                                         # heads applied to the wrong channels
        p = _reverse_heads(params)
    err = np.max(np.abs(np.asarray(lp.lpips(p, x, y)) - d))
    assert err > 20 * TOL, f"{break_it}: max error {err:.2e} would pass parity"


# ----------------------------------------------------------------------------- videos, loss

def test_video_folds_time_into_batch(params, golden):
    """Two 2-frame videos made of the fixture's frames: per-frame distances are the package's
    values, a video's distance is their mean."""
    x, y, d, _ = golden
    vx, vy = x.reshape(2, 2, *x.shape[1:]), y.reshape(2, 2, *y.shape[1:])
    frames, videos, loss = jax.jit(lambda p, a, b: (lp.lpips(p, a, b, per_frame=True), lp.lpips(p, a, b),
                                                    lp.perceptual_loss(p, b, a)))(params, vx, vy)
    np.testing.assert_allclose(np.asarray(frames), d.reshape(2, 2), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(videos), d.reshape(2, 2).mean(1), atol=TOL, rtol=0)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), d.mean(), atol=TOL)


def test_gradient_is_finite_and_zero_at_a_perfect_reconstruction(params, golden):
    x, y, _, _ = golden
    grad = jax.jit(jax.grad(lp.perceptual_loss, argnums=1))
    g = np.asarray(grad(params, jnp.asarray(y), jnp.asarray(x)))
    assert np.all(np.isfinite(g)) and np.abs(g[0]).max() > 0
    assert np.all(g[2] == 0)                                  # the identical pair: a minimum
    g0 = jax.grad(lambda f: jnp.sum(lp.unit_normalize(f)))(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(g0)))                # all-zero channels (dead ReLUs)


def test_bfloat16_trunk_stays_close(params, golden):
    x, y, d, _ = golden
    got = lpips_jit(params, x, y, dtype=jnp.bfloat16)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), d, rtol=0.05, atol=2e-3)


# ----------------------------------------------------------------------------- format, errors

def test_module_params_match_the_documented_format():
    """The Linen module's own param tree (names, shapes) is the weight file's documented layout."""
    dummy = jnp.zeros((1, 16, 16, 3))
    shapes = jax.eval_shape(lp.LPIPS(lp.VGG16_WIDTHS).init, jax.random.key(0), dummy, dummy)["params"]
    got = {"/".join(q.key for q in path): tuple(v.shape)
           for path, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert got == lp.expected_shapes(lp.VGG16_WIDTHS)
    assert got["vgg/conv1_1/kernel"] == (3, 3, 3, 64) and got["vgg/conv5_3/bias"] == (512,)
    assert got["lin4/kernel"] == (512, 1) and len(got) == 2 * 13 + 5
    assert {k: v.shape for k, v in lp.flatten(lp.init_params(0)).items()} == got


def test_save_load_round_trip(tmp_path):
    p = lp.init_params(1, WIDTHS)
    assert all(np.all(np.asarray(p[f"lin{l}"]["kernel"]) >= 0) for l in range(5))
    path = str(tmp_path / "p.npz")
    lp.save(path, p)
    q = lp.load(path)
    assert jax.tree.structure(q) == jax.tree.structure(p)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lpips_weights_path.*scripts/convert_lpips\.py"):
        lp.load(str(tmp_path / "nope.npz"))


def test_load_rejects_a_file_that_is_not_npz(tmp_path):
    path = tmp_path / "vgg.pth"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz.*convert_lpips"):
        lp.load(str(path))


def test_load_names_missing_and_unexpected_arrays(tmp_path):
    a = _arrays()
    a["lin2/weight"] = a.pop("lin2/kernel")
    with pytest.raises(ValueError, match=r"missing \['lin2/kernel'\], unexpected \['lin2/weight'\]"):
        lp.load(_write(tmp_path, a))


def test_load_names_the_array_with_a_wrong_shape(tmp_path):
    a = _arrays()
    a["vgg/conv3_2/bias"] = a["vgg/conv3_2/bias"][:-1]
    with pytest.raises(ValueError, match=r"'vgg/conv3_2/bias' has shape \(7,\), expected \(8,\)"):
        lp.load(_write(tmp_path, a))
    a = _arrays()
    a["lin1/kernel"] = a["lin1/kernel"].reshape(1, -1)              # torch's (1, C) layout
    with pytest.raises(ValueError, match=r"'lin1/kernel' has shape \(1, 6\), expected \(6, 1\)"):
        lp.load(_write(tmp_path, a))
    a = _arrays()
    a["vgg/conv1_1/kernel"] = a["vgg/conv1_1/kernel"].transpose(3, 2, 0, 1)   # torch OIHW
    with pytest.raises(ValueError, match=r"'vgg/conv1_1/kernel' has shape \(4, 3, 3, 3\), expected "
                                         r"\(3, 3, 3, 4\)"):
        lp.load(_write(tmp_path, a))


def test_load_rejects_negative_heads(tmp_path):
    a = _arrays()
    a["lin3/kernel"] = -a["lin3/kernel"]
    with pytest.raises(ValueError, match=r"'lin3/kernel' has negative weights"):
        lp.load(_write(tmp_path, a))


@pytest.mark.parametrize("xs, ys, match", [
    ((1, 16, 16, 3), (1, 16, 20, 3), "differ in shape"),
    ((1, 16, 16, 1), (1, 16, 16, 1), r"\(B, H, W, 3\)"),
    ((16, 16, 3), (16, 16, 3), r"\(B, H, W, 3\)"),
    ((1, 2, 8, 32, 3), (1, 2, 8, 32, 3), "at least 16x16.*got 8x32"),
])
def test_bad_inputs(params, xs, ys, match):
    with pytest.raises(ValueError, match=match):
        lp.lpips(params, np.zeros(xs, np.float32), np.zeros(ys, np.float32))


def test_not_lpips_params():
    with pytest.raises(ValueError, match="not LPIPS params"):
        lp.lpips({"conv": {}}, np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 3)))


# ----------------------------------------------------------------------------- converter

def _torch_layout():
    """Our committed arrays in torch's layout (torchvision / lpips keys), as numpy."""
    a = _arrays()
    vgg = {}
    for name, i in zip(lp.conv_names(), lp.TORCHVISION_INDICES):
        vgg[f"features.{i}.weight"] = a[f"vgg/{name}/kernel"].transpose(3, 2, 0, 1)
        vgg[f"features.{i}.bias"] = a[f"vgg/{name}/bias"]
    lin = {f"lin{l}.model.1.weight": a[f"lin{l}/kernel"].reshape(1, -1, 1, 1) for l in range(5)}
    return a, vgg, lin


def test_converter_constants_match_the_module():
    assert convert_lpips.TORCHVISION_INDICES == lp.TORCHVISION_INDICES
    assert convert_lpips.CONV_NAMES == lp.conv_names()


def _as_lpips_module_state(vgg, lin):
    """The same weights as a whole lpips.LPIPS().state_dict() names them: net.slice{k}.{N}.*
    (slice k holds torchvision indices 0-3, 4-8, 9-15, 16-22, 23-29) and lins.{l}.*."""
    def sliced(key):
        n = int(key.split(".")[1])
        return key.replace("features.", f"net.slice{1 + sum(n > last for last in (3, 8, 15, 22))}.")
    return ({sliced(k): v for k, v in vgg.items() if k.startswith("features.")},
            {k.replace("lin", "lins.", 1): v for k, v in lin.items()})


def test_converter_maps_torch_layouts(tmp_path):
    ours, vgg, lin = _torch_layout()
    vgg["classifier.0.weight"] = np.zeros((2, 16), np.float32)           # ignored
    assert "net.slice3.14.weight" in _as_lpips_module_state(vgg, lin)[0]
    for v, l in [(vgg, lin),
                 ({f"module.{k}": x for k, x in vgg.items()}, lin),       # DataParallel prefix
                 _as_lpips_module_state(vgg, lin)]:
        out = convert_lpips.convert(v, l)
        assert sorted(out) == sorted(ours)
        for k in ours:
            np.testing.assert_array_equal(out[k], ours[k], err_msg=k)
    path = str(tmp_path / "out")                    # no .npz suffix: written exactly there
    convert_lpips.write_npz(path, out)
    assert lp.widths_of(lp.load(path)) == WIDTHS


def test_converter_errors():
    _, vgg, lin = _torch_layout()
    with pytest.raises(ValueError, match=r"--vgg: not a VGG16 state dict: missing 2 of 26 conv keys, "
                                         r"e.g. \['features.24.weight', 'features.24.bias'\]"):
        convert_lpips.convert({k: v for k, v in vgg.items() if not k.startswith("features.24.")}, lin)
    with pytest.raises(ValueError, match=r"unexpected conv keys \['features.1.weight'\]"):
        convert_lpips.convert({**vgg, "features.1.weight": np.ones(4, np.float32)}, lin)
    with pytest.raises(ValueError, match=r"features.5.weight \(6, 3, 3, 3\).*expected \(C, 4, 3, 3\)"):
        convert_lpips.convert({**vgg, "features.5.weight": vgg["features.5.weight"][:, :3]}, lin)
    with pytest.raises(ValueError, match=r"--lin: not an LPIPS linear-head file: missing "
                                         r"\['lin4.model.1.weight'\]"):
        convert_lpips.convert(vgg, {k: v for k, v in lin.items() if not k.startswith("lin4")})
    with pytest.raises(ValueError, match=r"lin0.model.1.weight has negative entries"):
        convert_lpips.convert(vgg, {**lin, "lin0.model.1.weight": -lin["lin0.model.1.weight"]})
    with pytest.raises(ValueError, match=r"heads' widths \[4, 6, 8, 12, 12\].*stage widths "
                                         r"\[4, 6, 8, 12, 16\]"):
        convert_lpips.convert(vgg, {**lin, "lin4.model.1.weight": lin["lin3.model.1.weight"]})


def test_converter_cli_missing_file(tmp_path):
    with pytest.raises(SystemExit, match=r"--vgg .*nope.pth: no such file"):
        convert_lpips.main(["--vgg", str(tmp_path / "nope.pth"), "--lin", WEIGHTS,
                            "--out", str(tmp_path / "o.npz")])


def test_converter_on_the_package_pth_files(tmp_path):
    """The real .pth -> .npz path; needs torch (absent from seaweed_jax's env: skipped there)."""
    pytest.importorskip("torch")
    out = str(tmp_path / "converted.npz")
    convert_lpips.main(["--vgg", os.path.join(FIXTURE, "vgg_tiny.pth"),
                        "--lin", os.path.join(FIXTURE, "lin_tiny.pth"), "--out", out])
    with np.load(out) as got:
        ours = _arrays()
        assert sorted(got.files) == sorted(ours)
        for k in ours:
            np.testing.assert_array_equal(got[k], ours[k], err_msg=k)
