"""Score a distillation chain on held-out prompts; one JSON line per model, then a summary line.

    python scripts/distill_report.py --teacher=runs/dit_long \
        --students=runs/distill/cfg,runs/distill/tscd8,runs/distill/tscd4,runs/distill/tscd2 \
        --cfg_student=runs/distill/cfg --out=runs/distill/report.json

Every model samples the same prompts (64 canonical prompts with label seed 31337 and 128 with
seed 777 by default, prompt i with noise seed 1000 + i) at its own default sampler (the
teacher: its 50 Euler steps with two-pass CFG; a student: its config's steps, one call each),
scored by the prompt checker with 95% Wilson intervals, wall time per sample after a warm-up
batch. With --cfg_student: the relative MSE of its one-pass velocity against the teacher's
two-pass guided velocity, on validation latents at several t and w.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from seaweed_jax import config_lib, paths
from seaweed_jax.diffusion import distill, flow
from seaweed_jax.inference import compare
from seaweed_jax.inference.dit_sampler import DiTSampler

_TEACHER = flags.DEFINE_string("teacher", None, "The base teacher run.", required=True)
_STUDENTS = flags.DEFINE_list("students", [], "Distilled runs.")
_CFG_STUDENT = flags.DEFINE_string("cfg_student", None, "A CFG-distilled run to compare velocities.")
_PROMPTS = flags.DEFINE_list("prompts", ["64@31337", "128@777"], "N@SEED prompt sets.")
_OUT = flags.DEFINE_string("out", None, "Also write the lines to this file.")
_T = (0.1, 0.3, 0.5, 0.7, 0.9)
_W = (1.0, 2.0, 4.0, 7.0)


def velocity_match(teacher: DiTSampler, student: DiTSampler, num_examples: int = 64) -> dict:
    """Relative MSE |v_student - v_teacher|^2 / |v_teacher|^2 per (t, w), empty negative prompt."""
    config = teacher.config
    batch = next(iter(teacher.task.make_eval_iterator(
        data_dir=config_lib.data_dir_for(config), source=0, num_examples=num_examples,
        batch_size=num_examples)))
    z = jnp.asarray(batch["latents"], jnp.float32)
    ids, mask = jnp.asarray(batch["text_ids"]), jnp.asarray(batch["text_mask"])
    b = z.shape[0]
    eps = jax.random.normal(jax.random.key(0), z.shape)
    null_ids, null_mask = teacher.task.text.tokenize([""])
    out = {}
    for params, task, name in ((teacher.params, teacher.task, "t"), (student.params, student.task, "s")):
        emb, m = task.encode_text(params, ids, mask)
        nemb, nm = task.encode_text(params, jnp.asarray(null_ids), jnp.asarray(null_mask))
        out[name] = (emb, m, jnp.broadcast_to(nemb, emb.shape), jnp.broadcast_to(nm, m.shape))
    table = {}
    for t in _T:
        tt = jnp.full((b,), t)
        x = flow.interpolate(z, eps, tt)
        emb, m, nemb, nm = out["t"]
        v_pos = teacher.task.velocity(teacher.params, x, tt, emb, m)
        v_neg = teacher.task.velocity(teacher.params, x, tt, nemb, nm)
        semb, sm, snemb, snm = out["s"]
        pooled = distill.mean_pool(snemb, snm)
        for w in _W:
            target = distill.cfg_target(v_pos, v_neg, jnp.full((b,), w))
            v = student.task.velocity(student.params, x, tt, semb, sm, None, jnp.full((b,), w), pooled)
            table[f"t{t:g}_w{w:g}"] = float(jnp.mean(jnp.square(v - target)) / jnp.mean(jnp.square(target)))
    return {"relative_mse": table, "mean": float(np.mean(list(table.values()))), "examples": b}


def main(argv):
    del argv
    sets = [tuple(int(v) for v in s.split("@")) for s in _PROMPTS.value]
    prompts = compare.heldout_prompts(sets)
    lines = []

    def emit(d):
        lines.append(json.dumps(d))
        print(lines[-1], flush=True)

    teacher = DiTSampler(_TEACHER.value)
    rows = {"teacher": compare.score_sampler(teacher, prompts)}
    emit({"model": "teacher", "prompt_sets": _PROMPTS.value, **rows["teacher"]})
    for workdir in _STUDENTS.value:
        rows[workdir] = compare.score_sampler(DiTSampler(workdir), prompts)
        emit({"model": workdir, **rows[workdir],
              "all_vs_teacher": rows[workdir]["all"] / rows["teacher"]["all"]})
    if _CFG_STUDENT.value:
        emit({"model": _CFG_STUDENT.value, "velocity_match": velocity_match(teacher, DiTSampler(_CFG_STUDENT.value))})
    if _OUT.value:
        paths.write_text(_OUT.value, "".join(line + "\n" for line in lines))
    print(f"{len(prompts)} prompts, {len(rows)} models", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
