"""Few-step distillation (diffusion/distill.py, trainer/distill_task.py): the TSCD math against
hand computations, the zero-initialized guidance embeddings, one-pass sampling of a distilled
run, and exact resume of each distillation kind after SIGKILL. Tiny sizes: tests/_dit_helpers.py."""
from __future__ import annotations

import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.diffusion import distill
from seaweed_jax.inference import compare
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.distill_task import DistillTask, default_distill_config


# ----------------------------------------------------------------------------- math

@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_segment_boundaries_follow_the_shift(shift):
    k = 4
    u = np.array([1.0, 0.75, 0.5, 0.25, 0.0])                       # 1 - j/k, by hand
    want = shift * u / (1.0 + (shift - 1.0) * u)
    np.testing.assert_allclose(distill.segment_boundaries(k, shift), want, rtol=0, atol=1e-7)
    grid = distill.teacher_grid(k, 3, shift)
    assert grid.shape == (13,) and np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(grid[::3], want, rtol=0, atol=1e-7)   # boundaries are grid points
    if shift != 1.0:  # the shift moves interior boundaries towards noise
        assert np.all(want[1:-1] > u[1:-1])


def test_grid_points_end_at_the_next_boundary():
    n, n_next, n_end = distill.sample_grid_points(jax.random.key(0), 4096, 4, 3)
    n, n_next, n_end = map(np.asarray, (n, n_next, n_end))
    assert n.min() == 0 and n.max() == 11                            # every point of 12 steps
    np.testing.assert_array_equal(n_next, n + 1)
    assert np.all(n_end % 3 == 0) and np.all((n_end - n >= 1) & (n_end - n <= 3))
    # the boundary ending point n's segment: the smallest multiple of 3 above n
    np.testing.assert_array_equal(n_end, [3 * (i // 3) + 3 for i in n])


def _linear_fields(seed=0):
    """Two different velocity fields v(x, t) = a x + b t (not the same function)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(k1, (3,)) * 0.5
    b = jax.random.normal(k2, (3,))
    teacher = lambda x, t: a * x + b * t[:, None]
    other = lambda x, t: -x + 2.0 * b * t[:, None]
    return teacher, other


def test_target_is_the_teacher_point_when_its_step_lands_on_the_boundary():
    teacher, target = _linear_fields()
    x = jax.random.normal(jax.random.key(3), (5, 3))
    t = jnp.full((5,), 0.6)
    t_next = jnp.full((5,), 0.4)
    y, x_next = distill.tscd_target(teacher, target, x, t, t_next, t_next)  # t_end = t_next
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x_next))
    np.testing.assert_allclose(np.asarray(x_next), np.asarray(x + (0.4 - 0.6) * teacher(x, t)),
                               rtol=1e-6)
    # ... and is the target model's jump otherwise
    y2, _ = distill.tscd_target(teacher, target, x, t, t_next, jnp.zeros((5,)))
    np.testing.assert_allclose(np.asarray(y2), np.asarray(x_next - 0.4 * target(x_next, t_next)),
                               rtol=1e-6)


def test_one_segment_one_step_is_the_teachers_own_update():
    teacher, target = _linear_fields(1)
    grid = distill.teacher_grid(1, 1)
    np.testing.assert_array_equal(grid, [1.0, 0.0])
    n, n_next, n_end = distill.sample_grid_points(jax.random.key(0), 8, 1, 1)
    assert np.all(np.asarray(n) == 0) and np.all(np.asarray(n_end) == 1)
    x1 = jax.random.normal(jax.random.key(4), (8, 3))
    t, t_next, t_end = jnp.asarray(grid)[n], jnp.asarray(grid)[n_next], jnp.asarray(grid)[n_end]
    y, _ = distill.tscd_target(teacher, target, x1, t, t_next, t_end)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x1 - 1.0 * teacher(x1, jnp.ones((8,)))),
                               rtol=1e-6)


def test_solver_substeps_and_heun_by_hand():
    f = lambda x, t: -2.0 * x                                        # x(t) = x0 exp(-2 (t - t0))
    x = jnp.ones((1, 1))
    t, e = jnp.array([1.0]), jnp.array([0.5])
    euler2 = distill.solve(f, x, t, e, substeps=2)                   # two steps of h = -0.25
    np.testing.assert_allclose(float(euler2[0, 0]), 1.5 * 1.5, rtol=1e-6)
    heun = distill.solve(f, x, t, e, method="heun")                  # one Heun step h = -0.5
    # predictor x + h f = 1 + 1 = 2; corrector x + h/2 (f(x) + f(2)) = 1 - 0.25 (-2 - 4) = 2.5
    np.testing.assert_allclose(float(heun[0, 0]), 2.5, rtol=1e-6)


def test_losses_and_cfg_target_by_hand():
    a = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    b = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(np.asarray(distill.distance(a, b, "mse")), [2.0, 12.5])
    c = 0.5
    np.testing.assert_allclose(np.asarray(distill.distance(a, b, "pseudo_huber", c)),
                               [np.sqrt(2.0 + 0.25) - 0.5, np.sqrt(12.5 + 0.25) - 0.5], rtol=1e-6)
    v_pos, v_neg = jnp.ones((2, 3)), jnp.zeros((2, 3))
    np.testing.assert_allclose(np.asarray(distill.cfg_target(v_pos, v_neg, jnp.array([1.0, 4.0]))),
                               [[1.0] * 3, [4.0] * 3])
    emb = jnp.arange(12.0).reshape(1, 3, 4)
    np.testing.assert_allclose(np.asarray(distill.mean_pool(emb, jnp.array([[True, True, False]]))),
                               [[2.0, 3.0, 4.0, 5.0]])


def test_wilson_interval_known_values():
    lo, hi = compare.wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert compare.wilson_interval(0, 10)[0] == 0.0


# ----------------------------------------------------------------------------- task

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def teacher(shared, tmp_path_factory):
    return H.write_dit_run(str(tmp_path_factory.mktemp("distill_teacher") / "dit"), shared["vae"])


def distill_config(teacher_dir, kind="cfg", **fields):
    c = config_lib.base_config()
    c.task = "distill"
    c.seed = 0
    c.num_steps = 12
    c.model = None
    c.init_from_key = "auto"
    c.distill = default_distill_config(kind=kind, teacher_workdir=teacher_dir, segments=2,
                                       steps_per_segment=2, cfg_scale_range=(1.0, 5.0))
    c.data.sources = [{"name": H.DATASET, "split": "train", "weight": 1.0}]
    c.data.num_train, c.data.num_validation = H.NUM_TRAIN, H.NUM_VAL
    c.data.global_batch_size = 8
    c.data.latent_cache = True
    c.data.prefetch = 0
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.ema_decay = 0.9
    c.log_every, c.eval_every, c.ckpt_every = 4, 0, 4
    c.keep_checkpoints = 5
    for k, v in fields.items():
        c[k] = v
    return c


def _resolved(config, data_dir):
    import copy
    import ml_collections as mc
    config = mc.ConfigDict(copy.deepcopy(config))
    with config.unlocked():
        config.data_dir = data_dir
        DistillTask.resolve_config(config)
    return config_lib.freeze(config)


def test_resolve_config_takes_the_teacher_and_adds_the_embeddings(shared, teacher):
    config = _resolved(distill_config(teacher, "tscd"), shared["data_dir"])
    t = ckpt_lib.load_config(teacher)
    assert config.model.cfg_scale_embed and config.model.negative_embed
    assert config.model.hidden_size == t.model.hidden_size and config.init_from == teacher
    assert config.sample.steps == 2 and config.sample.sampler == "euler"   # the segments
    assert config.distill.base_teacher == teacher
    assert dict(config.distill.teacher_model) == dict(t.model)
    assert config.init_from_key == "ema_params"          # 'auto': what the teacher samples with
    fixed = _resolved(distill_config(teacher, "tscd", distill=default_distill_config(
        kind="tscd", teacher_workdir=teacher, cfg_scale_range=None)), shared["data_dir"])
    assert tuple(fixed.distill.cfg_scale_range) == (3.0, 3.0)   # the teacher's sample.cfg_scale


def test_new_embeddings_start_at_zero_so_the_student_is_the_teachers_conditional_branch(shared, teacher):
    """After init_from the teacher, the student's velocity at any guidance scale and negative
    prompt equals the teacher's conditional velocity (its added embeddings output zero)."""
    config = _resolved(distill_config(teacher), shared["data_dir"])
    task = DistillTask(config, H_mesh())
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if np.asarray(v).dtype.kind in "biuf"}
    setup = loop.Setup(config, mesh=task.mesh, task=task, batch=batch)
    state = setup.apply_init_from(setup.init_state(), config.init_from, config.init_from_key)
    state = task.on_fresh_start(state)
    teacher_params = ckpt_lib.restore_params(teacher, setup.abstract.extra["teacher"])[0]
    for a, b in zip(jax.tree.leaves(state.extra["teacher"]), jax.tree.leaves(teacher_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    added = state.params["dit"]["cfg_scale_embed"]["fc2"], state.params["dit"]["negative_embed_fc2"]
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(added))

    x = batch["latents"]
    t = jnp.linspace(0.1, 0.9, x.shape[0])
    # jitted: op by op, each forward compiles hundreds of tiny programs
    emb, mask = jax.jit(task.encode_text)(state.params, batch["text_ids"], batch["text_mask"])
    neg = jax.random.normal(jax.random.key(2), (x.shape[0], emb.shape[-1]))
    v_student = jax.jit(task.student_velocity)(state.params, x, t, (emb, mask, neg), jnp.full((x.shape[0],), 6.0))
    v_teacher = jax.jit(task.teacher_model.apply)({"params": state.extra["teacher"]["dit"]}, x, t, emb, mask)
    np.testing.assert_allclose(np.asarray(v_student), np.asarray(v_teacher), rtol=1e-5, atol=1e-6)
    assert float(jnp.std(v_teacher)) > 1e-3   # not two zero outputs


@pytest.mark.parametrize("kind", ["cfg", "tscd"])
def test_one_step_of_each_kind_moves_only_the_students_dit(shared, teacher, kind):
    c = distill_config(teacher, kind)
    c.optimizer.warmup_steps = 0          # a learning rate > 0 on the first update
    config = _resolved(c, shared["data_dir"])
    task = DistillTask(config, H_mesh())
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if np.asarray(v).dtype.kind in "biuf"}
    setup = loop.Setup(config, mesh=task.mesh, task=task, batch=batch)
    state = task.on_fresh_start(setup.apply_init_from(setup.init_state(), config.init_from,
                                                      config.init_from_key))
    new, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    # at init the student is the teacher's conditional branch, not its guided velocity (w > 1)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert float(metrics["grad_norm"]) > 0
    same = lambda a, b: all(np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(new.params["text"], state.params["text"]) and same(new.extra, state.extra)
    assert not same(new.params["dit"], state.params["dit"])


def test_init_from_refuses_a_source_missing_params_the_task_does_not_add(shared, teacher):
    config = _resolved(distill_config(teacher), shared["data_dir"])
    task = DistillTask(config, H_mesh())
    setup = loop.Setup(config, mesh=task.mesh, task=task, batch=task.example_batch())
    task.new_params = ("dit/cfg_scale_embed",)        # negative_embed_* no longer expected
    with pytest.raises(ValueError, match="lacks 2 params of this model"):
        setup.apply_init_from(setup.init_state(), config.init_from, config.init_from_key)


def H_mesh():
    import ml_collections as mc
    from seaweed_jax.parallel import make_mesh
    return make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])


def test_distill_config_errors_name_the_field(shared, teacher):
    with pytest.raises(ValueError, match="distill.kind"):
        DistillTask(_resolved(distill_config(teacher, kind="bogus"), shared["data_dir"]), H_mesh())
    with pytest.raises(ValueError, match="teacher_workdir"):
        _resolved(distill_config(teacher + "_missing"), shared["data_dir"])
    with pytest.raises(ValueError, match="ema_decay"):
        DistillTask(_resolved(distill_config(teacher, "tscd", ema_decay=0.0), shared["data_dir"]), H_mesh())


# ----------------------------------------------------------------------------- resume + sampling

_RUNS = {}


def _kind_runs(kind, shared, teacher, root):
    """A straight 12-step run of `kind`, and one SIGKILLed at step 6 (latest checkpoint 4)
    then resumed to 12 (cached per module). tscd learns from the base DiT run (two-pass CFG
    teacher); cfg too."""
    if kind in _RUNS:
        return _RUNS[kind]
    env = H.env(shared["jax_cache"])
    cfg = H.write_config_file(str(root / f"{kind}.py"), distill_config(teacher, kind))
    wd = {name: str(root / f"{kind}_{name}") for name in ("straight", "killed")}
    logs = {}
    for name, target, extra in (("straight", "straight", ()), ("killed", "killed", ("--kill_at=6",)),
                                ("resume", "killed", ())):
        log = root / f"{kind}_{name}.log"
        with open(log, "w") as f:
            rc = subprocess.run([H.python(), H.RUNNER, f"--config={cfg}", f"--workdir={wd[target]}",
                                 f"--data_dir={shared['data_dir']}", *extra], cwd=H.REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
        logs[name] = (rc, log.read_text())
    _RUNS[kind] = {**wd, "logs": logs}
    return _RUNS[kind]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_runs")


@pytest.mark.parametrize("kind", ["tscd", pytest.param("cfg", marks=pytest.mark.slow)])
def test_each_distillation_kind_resumes_exactly_after_sigkill(shared, teacher, runs_root, kind):
    r = _kind_runs(kind, shared, teacher, runs_root)
    assert r["logs"]["straight"][0] == 0, r["logs"]["straight"][1]
    assert r["logs"]["killed"][0] == -signal.SIGKILL, r["logs"]["killed"][1]
    assert r["logs"]["resume"][0] == 0, r["logs"]["resume"][1]
    assert "resumed from" in r["logs"]["resume"][1] and "teacher:" not in r["logs"]["resume"][1]
    assert "teacher:" in r["logs"]["straight"][1]
    a = loop.restore_state(r["straight"], data_dir=shared["data_dir"])
    b = loop.restore_state(r["killed"], data_dir=shared["data_dir"])
    assert int(a.step) == int(b.step) == 12
    for part in ("params", "opt_state", "ema_params", "extra"):
        la, lb = jax.tree.leaves(getattr(a, part)), jax.tree.leaves(getattr(b, part))
        assert la and len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # training moved the student's DiT and left its text encoder and the teacher alone
    config = ckpt_lib.load_config(r["straight"])
    start = ckpt_lib.restore_params(config.init_from, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), a.extra["teacher"]),
        key=ckpt_lib.params_key(ckpt_lib.load_config(config.init_from)))[0]
    for x, y in zip(jax.tree.leaves(start), jax.tree.leaves(a.extra["teacher"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(start["text"]), jax.tree.leaves(a.params["text"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    moved = [not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(start["dit"]), jax.tree.leaves(
                 {k: v for k, v in a.params["dit"].items() if k in start["dit"]}))]
    assert sum(moved) > len(moved) // 2


def test_distilled_run_samples_with_one_call_per_step(shared, teacher, runs_root):
    from seaweed_jax.inference.dit_sampler import DiTSampler
    run = _kind_runs("tscd", shared, teacher, runs_root)["straight"]
    student = DiTSampler(run)
    videos, info = student.generate(["a red circle moving right on a black background"],
                                    progress=False)
    assert info["guidance"] == "embedded" and info["steps"] == 2 and info["nfe"] == 2
    assert videos.shape[0] == 1 and videos.dtype == np.uint8
    # the guidance scale is an input: another scale gives another sample from the same noise
    other, _ = student.generate(["a red circle moving right on a black background"], cfg_scale=1.0,
                                progress=False)
    assert not np.array_equal(videos, other)
    base = DiTSampler(ckpt_lib.load_config(run).distill.base_teacher)
    _, tinfo = base.generate(["a red circle"], steps=2, progress=False)
    assert tinfo["guidance"] == "two-pass" and tinfo["nfe"] == 4


def test_evaluate_reports_the_student_next_to_its_base_teacher(shared, teacher, runs_root):
    from seaweed_jax.inference.evaluate import evaluate
    run = _kind_runs("tscd", shared, teacher, runs_root)["straight"]
    out = evaluate(run, num_examples=3, prompt_seed=5)
    assert out["task"] == "distill" and out["kind"] == "tscd" and out["prompts"] == 3
    assert out["student"]["nfe"] == 2 and out["student"]["guidance"] == "embedded"
    assert out["teacher"]["nfe"] == 8 and out["teacher"]["guidance"] == "two-pass"  # 4 steps x 2
    assert out["teacher"]["workdir"] == teacher
    for side in ("student", "teacher"):
        lo, hi = out[side]["all_ci95"]
        assert 0.0 <= lo <= out[side]["all"] <= hi <= 1.0 and out[side]["seconds_per_sample"] > 0
