"""`DistillTask` ("distill"): few-step students of a trained DiT (math in diffusion/distill.py).

Two kinds, by `distill.kind`:
  cfg   CFG distillation. The student (the teacher's DiT plus a zero-initialized guidance-scale
        embedding and negative-prompt embedding, `model.cfg_scale_embed` / `negative_embed`)
        learns the teacher's guided velocity v_neg + w (v_pos - v_neg) in one pass, at
        w ~ U[cfg_scale_range] and the negative prompt: the empty prompt, or with
        probability `negative_prompt_prob` another example's caption.
  tscd  Trajectory-segmented consistency distillation into `segments` steps (one pass per step
        when the teacher embeds the guidance scale, else the teacher runs its two CFG passes).

The project's order: cfg first (teacher = the base DiT run), then tscd 16 -> 8 -> 4 -> 2 with
teacher = the CFG-distilled run (one pass per teacher step, half the teacher's cost), each
stage initialized from the previous student (`init_from`). configs/distill/moving_shapes.py
drives the stages.

What a run holds: params {"dit", "text"} like a DiT run (so `sample` and `evaluate` load it
the same way), and the frozen teacher's params in `state.extra["teacher"]` (loaded by
`on_fresh_start` from `distill.teacher_workdir`; checkpointed with the state, so a resumed
run reads only the teacher's config.json, never its params). The text encoder stays frozen
(the teacher's: no gradient reaches it, so it does not enter gradient clipping) unless
`distill.train_text_encoder`. Batches: the teacher's latent cache and captions (T2V; the
condition channels stay empty).

`resolve_config` fills from the teacher run what the distill config leaves unset (None):
model (+ the two embeddings), text_encoder, vae_workdir/step/use_ema, diffusion, sample (for
tscd: `segments` Euler steps), init_from (init_from_key 'auto': the EMA params when the source
run keeps them, which is what its samples used), cfg_scale_range None (the teacher's tuned
scale, fixed); it records the teacher's model and text encoder in
`distill.teacher_model` / `teacher_text_encoder` and the chain's first teacher in
`distill.base_teacher` (what `evaluate` compares against).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections as mc

from seaweed_jax import checkpoint, config_lib, paths
from seaweed_jax.diffusion import distill, flow
from seaweed_jax.models.dit import DiT
from seaweed_jax.models.text import build_text_encoder
from seaweed_jax.trainer import dit_task, optimizers
from seaweed_jax.trainer.state import TrainState

TARGETS = ("ema", "online")


def embedded_guidance(model_cfg) -> bool:
    """A CFG-distilled model: the guidance scale and the pooled negative prompt are inputs (one
    call per step). The bare `cfg_scale_embed` hook alone does not make one."""
    return bool(model_cfg.get("cfg_scale_embed", False) and model_cfg.get("negative_embed", False))


def default_distill_config(**overrides) -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.kind = "cfg"                     # cfg | tscd
    c.teacher_workdir = ""             # the run whose outputs the student learns
    c.teacher_step = mc.config_dict.placeholder(int)   # None: latest
    c.teacher_use_ema = True
    c.cfg_scale_range = (1.0, 7.0)     # w ~ U[low, high]; (w, w) for a fixed scale
    c.negative_prompt_prob = 0.25      # else the empty prompt (the teacher's unconditional branch)
    c.segments = 8                     # tscd: sampler steps k = segments
    c.steps_per_segment = 6            # tscd: teacher grid points per segment (grid = k * this)
    c.teacher_solver = "euler"         # tscd: euler | heun, per teacher step
    c.teacher_substeps = 1             # tscd: solver sub-steps between two grid points
    c.target = "ema"                   # tscd: ema (state.ema_params) | online (stop-gradient)
    c.loss = "pseudo_huber"            # tscd: pseudo_huber | mse (cfg always regresses with mse)
    c.huber_c = 1e-3
    c.train_text_encoder = False
    # Filled by resolve_config from the teacher run:
    c.teacher_model = mc.config_dict.placeholder(mc.ConfigDict)
    c.teacher_text_encoder = mc.config_dict.placeholder(mc.ConfigDict)
    c.base_teacher = mc.config_dict.placeholder(str)
    c.update(overrides)
    return c


def distill_config(config) -> mc.FrozenConfigDict:
    return dit_task._section(config, "distill", default_distill_config)


def validate_distill_config(config) -> None:
    d = distill_config(config)
    if d.kind not in distill.KINDS:
        raise ValueError(f"distill.kind={d.kind!r}; use one of {distill.KINDS}")
    if d.loss not in distill.LOSSES:
        raise ValueError(f"distill.loss={d.loss!r}; use one of {distill.LOSSES}")
    if d.teacher_solver not in distill.SOLVERS:
        raise ValueError(f"distill.teacher_solver={d.teacher_solver!r}; use one of {distill.SOLVERS}")
    if d.target not in TARGETS:
        raise ValueError(f"distill.target={d.target!r}; use one of {TARGETS}")
    if d.target == "ema" and d.kind == "tscd" and not float(config.get("ema_decay", 0) or 0) > 0:
        raise ValueError("distill.target='ema' needs an EMA: set ema_decay > 0 (e.g. 0.95), or "
                         "distill.target='online'")
    for name in ("segments", "steps_per_segment", "teacher_substeps"):
        if int(d[name]) < 1:
            raise ValueError(f"distill.{name}={d[name]} must be >= 1")
    low, high = (float(v) for v in d.cfg_scale_range)
    if not 0 <= low <= high:
        raise ValueError(f"distill.cfg_scale_range=({low}, {high}) must satisfy 0 <= low <= high")
    if not 0 <= float(d.negative_prompt_prob) <= 1:
        raise ValueError(f"distill.negative_prompt_prob={d.negative_prompt_prob} must be in [0, 1]")
    if not (config.model.get("cfg_scale_embed", False) and config.model.get("negative_embed", False)):
        raise ValueError("a distilled student takes the guidance scale and the negative prompt as "
                         "inputs: set model.cfg_scale_embed=True and model.negative_embed=True "
                         "(resolve_config does when model is None)")
    if d.teacher_model is None or d.teacher_text_encoder is None:
        raise ValueError("distill.teacher_model / teacher_text_encoder are unset: they are recorded "
                         "from distill.teacher_workdir when training starts (DistillTask.resolve_config)")
    if dit_task.packing_enabled(config):
        raise ValueError("data.packing is not supported by distillation; set data.packing.enabled=False")
    student_text = dict(dit_task.text_encoder_config(config))
    teacher_text = dict(d.teacher_text_encoder)
    if student_text != teacher_text:
        raise ValueError(f"text_encoder={student_text} differs from the teacher's {teacher_text}; "
                         "leave text_encoder unset (None) to take the teacher's")


def _teacher_dir(config) -> str:
    d = config.distill
    workdir = str(d.get("teacher_workdir") or "")
    if not workdir:
        raise ValueError("distill.teacher_workdir is empty; set it to the DiT (or distilled) run "
                         "to learn from, e.g. --config=configs/distill/moving_shapes.py:cfg,teacher=runs/dit_long")
    if not paths.run_path(workdir).is_dir() or checkpoint.latest_step(workdir) is None:
        raise ValueError(f"distill.teacher_workdir={workdir} is not a trained run (no checkpoints "
                         "there); train the teacher first or fix the path")
    return workdir


class DistillTask(dit_task.DiTTask):
    """See the module docstring."""

    new_params = ("dit/cfg_scale_embed", "dit/negative_embed_fc1", "dit/negative_embed_fc2")

    @classmethod
    def resolve_config(cls, config) -> None:
        if config.get("distill") is None:
            raise ValueError("config.distill is missing; build it from "
                             "distill_task.default_distill_config()")
        teacher_dir = _teacher_dir(config)
        teacher = checkpoint.load_config(teacher_dir, config.distill.get("teacher_step"))
        if teacher.task not in ("dit", "distill"):
            raise ValueError(f"distill.teacher_workdir={teacher_dir} is a {teacher.task!r} run; "
                             "use a DiT ('dit') or distilled ('distill') run")
        kind = str(config.distill.get("kind", "cfg"))
        if not config.get("model"):   # None or the empty section of config_lib.base_config
            model = config_lib.thaw(teacher.model)
            model.cfg_scale_embed = True
            model.negative_embed = True
            config.model = model
        if config.get("text_encoder") is None:
            config.text_encoder = config_lib.thaw(dit_task.text_encoder_config(teacher))
        if not config.get("vae_workdir"):
            config.vae_workdir = dit_task.resolve_vae_workdir(teacher, teacher_dir)
            config.vae_step = teacher.get("vae_step", None)
            config.vae_use_ema = bool(teacher.get("vae_use_ema", True))
        if config.get("diffusion") is None:
            config.diffusion = config_lib.thaw(dit_task.diffusion_config(teacher))
        if config.get("sample") is None:
            sample = config_lib.thaw(dit_task.sample_config(teacher))
            if kind == "tscd":
                sample.steps, sample.sampler = int(config.distill.segments), "euler"
            config.sample = sample
        if not config.get("init_from"):
            config.init_from = teacher_dir
        if config.get("init_from_key") == "auto":   # the params the source run is sampled with
            config.init_from_key = checkpoint.params_key(checkpoint.load_config(config.init_from), True)
        if config.distill.get("cfg_scale_range") is None:   # the teacher's tuned scale, fixed
            w = float(dit_task.sample_config(teacher).cfg_scale)
            config.distill.cfg_scale_range = (w, w)
        d = config.distill
        d.teacher_workdir = paths.display(teacher_dir)
        d.teacher_model = config_lib.thaw(teacher.model)
        d.teacher_text_encoder = config_lib.thaw(dit_task.text_encoder_config(teacher))
        d.base_teacher = (teacher.distill.base_teacher if teacher.task == "distill"
                          else paths.display(teacher_dir))
        super().resolve_config(config)

    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        validate_distill_config(config)
        self.dcfg = distill_config(config)
        self.teacher_model = DiT(self.dcfg.teacher_model)
        self.teacher_text = build_text_encoder(self.dcfg.teacher_text_encoder)
        self.teacher_one_pass = embedded_guidance(self.dcfg.teacher_model)

    # ------------------------------------------------------------------ state
    def init(self, rng, batch):
        k_dit, k_text, k_tdit, k_ttext = jax.random.split(rng, 4)
        x = batch["latents"][:1]
        ids, mask = batch["text_ids"][:1], batch["text_mask"][:1].astype(bool)
        t = jnp.zeros((1,), jnp.float32)
        w = jnp.ones((1,), jnp.float32)

        def dit_params(model, key):
            emb = jnp.zeros((1, ids.shape[1], int(model.config.text_dim)), jnp.float32)
            neg = jnp.zeros((1, int(model.config.text_dim)), jnp.float32)
            cond = flow.empty_condition(x.shape) if dit_task.conditioning(model.config) else None
            return model.init(key, x, t, emb, mask, cond, w, neg)["params"]

        params = {"dit": dit_params(self.model, k_dit),
                  "text": self.text.module.init(k_text, ids, mask)["params"]}
        teacher = {"dit": dit_params(self.teacher_model, k_tdit),
                   "text": self.teacher_text.module.init(k_ttext, ids, mask)["params"]}
        return TrainState.create(params=params, tx=self.tx, ema_decay=self.ema_decay,
                                 extra={"teacher": teacher})

    def on_fresh_start(self, state: TrainState) -> TrainState:
        """The teacher's params (its EMA when kept and asked for) into state.extra['teacher']."""
        d = self.dcfg
        teacher_cfg = checkpoint.load_config(d.teacher_workdir, d.teacher_step)
        key = checkpoint.params_key(teacher_cfg, bool(d.teacher_use_ema))
        params, step, missing = checkpoint.restore_params_over(
            d.teacher_workdir, state.extra["teacher"], key=key, step=d.teacher_step)
        if missing:
            raise ValueError(f"the teacher run {d.teacher_workdir} lacks params {missing[:4]}: its "
                             "checkpoint does not match its recorded model config")
        if jax.process_index() == 0:
            print(f"teacher: {key} of {d.teacher_workdir} step {step} "
                  f"({'one pass, embedded guidance' if self.teacher_one_pass else 'two-pass CFG'})",
                  flush=True)
        return state.replace(extra={**state.extra, "teacher": params})

    # ------------------------------------------------------------------ models
    def student_velocity(self, params, x, t, text, w):
        """The student's velocity at guidance scale w (B,), text = (emb, mask, pooled negative)."""
        emb, mask, neg = text
        return self.model.apply({"params": params["dit"]}, x, t, emb, mask, None, w, neg)

    def teacher_velocity(self, teacher, x, t, text, w):
        """The teacher's guided velocity at scale w: one pass when it embeds the guidance
        scale, else its two CFG branches as one batch. text = (emb, mask, neg_emb, neg_mask)."""
        emb, mask, neg_emb, neg_mask = text
        apply = lambda *a: self.teacher_model.apply({"params": teacher["dit"]}, *a)
        if self.teacher_one_pass:
            return apply(x, t, emb, mask, None, w, distill.mean_pool(neg_emb, neg_mask))
        v = apply(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([emb, neg_emb]),
                  jnp.concatenate([mask, neg_mask]))
        v_pos, v_neg = jnp.split(v, 2)
        return distill.cfg_target(v_pos, v_neg, w)

    def _texts(self, params, teacher, batch, key):
        """Student text (emb, mask, pooled negative) and teacher text (emb, mask, neg emb,
        neg mask); the negative is another example's caption with negative_prompt_prob, else
        the empty prompt."""
        ids, mask = batch["text_ids"], batch["text_mask"].astype(bool)
        b = ids.shape[0]
        other = jax.random.bernoulli(key, float(self.dcfg.negative_prompt_prob), (b,))
        null_ids = jnp.broadcast_to(jnp.asarray(self.null_ids), ids.shape)
        null_mask = jnp.broadcast_to(jnp.asarray(self.null_mask, bool), mask.shape)
        neg_ids = jnp.where(other[:, None], jnp.roll(ids, 1, axis=0), null_ids)
        neg_mask = jnp.where(other[:, None], jnp.roll(mask, 1, axis=0), null_mask)
        text_params = params if self.dcfg.train_text_encoder else jax.lax.stop_gradient(params)
        s_emb, s_mask = self.encode_text(text_params, ids, mask)
        s_neg, s_neg_mask = self.encode_text(text_params, neg_ids, neg_mask)
        t_enc = lambda i, m: self.teacher_text.apply(teacher["text"], i, m)
        t_emb, t_mask = t_enc(ids, mask)
        t_neg, t_neg_mask = t_enc(neg_ids, neg_mask)
        student = (s_emb, s_mask, distill.mean_pool(s_neg, s_neg_mask))
        return student, (t_emb, t_mask, t_neg, t_neg_mask), other

    # ------------------------------------------------------------------ losses
    def _cfg_loss(self, params, ema_params, teacher, batch, rng):
        del ema_params
        x0 = batch["latents"].astype(jnp.float32)
        b = x0.shape[0]
        d, dd = self.dcfg, self.diff
        k_text, k_w, k_t, k_noise = jax.random.split(rng, 4)
        student_text, teacher_text, other = self._texts(params, teacher, batch, k_text)
        w = distill.sample_cfg_scales(k_w, b, *(float(v) for v in d.cfg_scale_range))
        t = flow.sample_timesteps(k_t, b, dd.timesteps, float(dd.logit_mean), float(dd.logit_std),
                                  self.timestep_shift(x0.shape[1:4]))
        x_t, _, _ = flow.noisy_inputs(k_noise, x0, t)
        target = jax.lax.stop_gradient(self.teacher_velocity(teacher, x_t, t, teacher_text, w))
        v = self.student_velocity(params, x_t, t, student_text, w)
        per_example = distill.distance(v, target, "mse")
        return per_example.mean(), {"t_mean": t.mean(), "w_mean": w.mean(),
                                    "negative_share": other.mean(),
                                    "target_rms": jnp.sqrt(jnp.mean(jnp.square(target)))}

    def _tscd_loss(self, params, ema_params, teacher, batch, rng):
        x0 = batch["latents"].astype(jnp.float32)
        b = x0.shape[0]
        d = self.dcfg
        k_text, k_w, k_n, k_noise = jax.random.split(rng, 4)
        student_text, teacher_text, other = self._texts(params, teacher, batch, k_text)
        w = distill.sample_cfg_scales(k_w, b, *(float(v) for v in d.cfg_scale_range))
        grid = jnp.asarray(distill.teacher_grid(int(d.segments), int(d.steps_per_segment),
                                                float(self.sample_cfg.shift)))
        n, n_next, n_end = distill.sample_grid_points(k_n, b, int(d.segments), int(d.steps_per_segment))
        t, t_next, t_end = grid[n], grid[n_next], grid[n_end]
        x_t, _, _ = flow.noisy_inputs(k_noise, x0, t)
        target_params = jax.lax.stop_gradient(ema_params if d.target == "ema" else params)
        target_text = jax.tree.map(jax.lax.stop_gradient, student_text)
        y, _ = distill.tscd_target(
            lambda x, s: self.teacher_velocity(teacher, x, s, teacher_text, w),
            lambda x, s: self.student_velocity(target_params, x, s, target_text, w),
            x_t, t, t_next, t_end, substeps=int(d.teacher_substeps), method=d.teacher_solver)
        pred = distill.jump(x_t, t, t_end, self.student_velocity(params, x_t, t, student_text, w))
        per_example = distill.distance(pred, y, d.loss, float(d.huber_c))
        return per_example.mean(), {"t_mean": t.mean(), "w_mean": w.mean(),
                                    "jump_mean": (t - t_end).mean(), "negative_share": other.mean()}

    def train_step(self, state: TrainState, batch: Mapping[str, Any], rng):
        loss_fn = self._cfg_loss if self.dcfg.kind == "cfg" else self._tscd_loss
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.ema_params, state.extra["teacher"], batch, rng)
        new = state.apply_gradients(grads)
        if not self.dcfg.train_text_encoder:   # the teacher's text encoder stays as it is
            new = new.replace(params={**new.params, "text": state.params["text"]},
                              ema_params=None if new.ema_params is None else
                              {**new.ema_params, "text": state.ema_params["text"]})
        grad_norm = optimizers.global_norm(grads["dit"])
        return new, {"loss": loss, "grad_norm": grad_norm, **aux}

    def evaluate(self, state, *, data_dir, workdir, step):
        """Distilled runs are scored by sampling (`python -m seaweed_jax.evaluate --workdir=W`:
        NFE, wall time and the prompt checker next to the base teacher), not during training."""
        del state, data_dir, workdir, step
        return {}
