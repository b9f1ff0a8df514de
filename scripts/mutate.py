"""Mutation testing of the core math and the resume path (mutmut 2), then the score per module.

    make mutate                                   # everything in mutmut_config.SCOPE
    make mutate MUTATE_ARGS="--only rope.py"      # one module (a path suffix), e.g. after a fix
    python scripts/mutate.py --report             # the table from the last run's cache

mutmut mutates one module at a time on disk and runs that module's tests (mutmut_config.py
picks them); results accumulate in .mutmut-cache, so a rerun only retests survivors and new
mutants. The score per module is killed / (mutants - skipped - equivalent), where skipped
means out of scope (see mutmut_config.py) and equivalent mutants are listed in EQUIVALENT below
with the reason each cannot change behaviour. The table goes to docs/testing.md.
"""
from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import mutmut_config  # noqa: E402  (the repository root is not on sys.path for scripts/)

CACHE = os.path.join(ROOT, ".mutmut-cache")

# (module, source line stripped, mutant index on that line) -> why the mutant is equivalent
_CC = "seaweed_jax/models/vae/causal_conv.py"
_ASTYPE_NONE = ("x.astype(None) casts to JAX's default float dtype, float32 while x64 is off: "
                "the same as the default it replaces")
_GATHER_CLAMPS = ("jnp indexing clamps an out-of-bounds index on retrieval, so clipping to "
                  "shape[0] + 1 then gathering reads the same last row as clipping to shape[0] - 1")
EQUIVALENT: dict[tuple[str, str, int], str] = {
    (_CC, "taps = x[:, : (n_out - 1) * st + 1: st]", 0):
        "kt == 1: n_out * st > T - 1 by the definition of n_out, so any slice end past "
        "(n_out - 1) * st selects the same frames",
    (_CC, "taps = x[:, : (n_out - 1) * st + 1: st]", 4): "as above (end + 1)",
    (_CC, "padded = jnp.concatenate([pad, x], axis=1) if kt > 1 else x", 1):
        "kt == 1 pads with zero repeated frames, and concatenating an empty pad returns x",
    (_CC, "dtype: jnp.dtype = jnp.float32", 0): _ASTYPE_NONE,
    ("seaweed_jax/models/dit/modulation.py", "zero_init_out: bool = False", 1):
        "the field is only tested for truth; None is as false as False",
    ("seaweed_jax/models/dit/modulation.py", "dtype: Dtype = jnp.float32", 0):
        "the field only reaches layers.Linear, which computes in x.astype(dtype) and "
        "kernel.astype(dtype); " + _ASTYPE_NONE,
    ("seaweed_jax/trainer/optimizers.py", "if warmup_updates <= 0:", 0):
        "with 0 warmup updates optax.join_schedules([warmup, main], [0]) already uses the main "
        "schedule from step 0 on, so skipping the join changes no learning rate",
    ("seaweed_jax/models/vae/haar.py", "for bits in itertools.product((0, 1), repeat=ndim):", 1):
        "each bit is only tested for truth (_HIGH if b else _LOW); 2 is as true as 1",
    ("seaweed_jax/diffusion/refine.py",
     "a = jnp.where(levels >= 0, table[jnp.clip(levels, 0, table.shape[0] - 1)], 1.0)", 4):
        _GATHER_CLAMPS,
}

_CKPT = "seaweed_jax/checkpoint.py"
_READ_ONLY_MANAGER = "make_manager(workdir, read_only=True, async_save=False)"
EQUIVALENT.update({
    (_CKPT, 'return int(files[0].name.rsplit("-of-", 1)[1].removesuffix(".json")) if files else None', 2):
        "iterator files are named process_<i>-of-<n>.json: `-of-` occurs once, so any maxsplit "
        "gives the same last part",
    (_CKPT, "manager = " + _READ_ONLY_MANAGER, 1):
        "make_manager ignores async_save when read_only=True (a read-only manager never saves)",
    (_CKPT, "manager = " + _READ_ONLY_MANAGER, 0):
        "latest_step opens the manager only on an existing checkpoint directory and only reads "
        "from it; checked: a writable manager opened on a directory with 5 steps (keep 3) and a "
        "leftover tmp directory changes no file's size or mtime",
    ("seaweed_jax/trainer/loop.py", "manager = ckpt_lib." + _READ_ONLY_MANAGER, 1):
        "make_manager ignores async_save when read_only=True (a read-only manager never saves)",
    (_CKPT, "parent.mkdir(parents=True, exist_ok=True)", 0):
        "the run directory exists whenever one of its checkpoints is set aside (the checkpoint "
        "lies inside it), so only the last component is ever created",
    ("seaweed_jax/diffusion/packed.py", "sample = jnp.clip(segment - 1, 0, emb.shape[1] - 1)", 4):
        _GATHER_CLAMPS,
    ("seaweed_jax/diffusion/packed.py",
     "weight = weight.astype(jnp.float32) * (segment > 0)[..., None]", 1):
        "padding tokens (segment 0) sum into segment_sum's bin 0, which [1:] drops: an unmasked "
        "padding weight changes neither the loss nor its gradient (bin 0's cotangent is 0)",
    ("seaweed_jax/diffusion/packed.py",
     "return jax.ops.segment_sum(values.sum(-1), seg, num_segments=num_samples + 1)[1:]", 0):
        "inside the vmap `values` is (N, P): axis +1 is axis -1",
    (_CC, '_HALO_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("halo_axis", default=None)', 0):
        "an annotation only: with `from __future__ import annotations` it is never evaluated",
    (_CC, '_HALO_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("halo_axis", default=None)', 1):
        "a ContextVar's name is a label for repr only; the variable is found by identity",
    (_CC, "if axis is not None and kt > 1:", 1):
        "a kt = 1 conv reads no past frame; under the halo it would only replace the device's "
        "duplicate frame 0, a frame no later result reads until a kt > 1 conv rebuilds it from "
        "the previous device (and the multi-device output drops it)",
    ("seaweed_jax/kernels/options.py", "interpret: bool | None = None", 0):
        "an annotation only: with `from __future__ import annotations` it is never evaluated",
    ("seaweed_jax/diffusion/samplers.py", "if u.shape[0] == 1 and c.shape[0] != 1:", 6):
        "the check above admits only batch 1 or the cond batch; `or` also broadcasts a "
        "cond-batch uncond to its own shape, a no-op",
})

KILLED = ("ok_killed", "ok_suspicious", "bad_timeout")  # a timeout means the tests noticed


def _test_ids(paths: list[str]) -> list[str]:
    """Every test id the chosen modules use."""
    return sorted({t for p in paths for t in mutmut_config.existing(mutmut_config.SCOPE[p][1])})


def _baseline_runner(paths: list[str]) -> str:
    """mutmut's first, unmutated run: every test the chosen modules use (it must pass, and
    ten times its duration is the timeout of one mutant's run)."""
    return mutmut_config._PYTEST + " ".join(_test_ids(paths))


def check_test_ids(paths: list[str]) -> None:
    """Every test id the run will use exists and is collected (pytest exit 4/5 would otherwise
    make every mutant of that module look like a survivor)."""
    ids = _test_ids(paths)
    code = subprocess.call([sys.executable, "-m", "pytest", "--co", "-q", "-m", "not slow", *ids],
                           cwd=ROOT, stdout=subprocess.DEVNULL)
    if code != 0:
        raise SystemExit(f"pytest cannot collect the tests of mutmut_config.SCOPE (exit {code}); "
                         f"run `pytest --co {' '.join(ids)}` to see which id is wrong")


def run(paths: list[str]) -> float:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    cmd = [os.path.join(os.path.dirname(sys.executable), "mutmut"), "run", "--no-progress",
           "--simple-output", "--paths-to-mutate", ",".join(paths), "--tests-dir", "tests",
           "--runner", _baseline_runner(paths)]
    start = time.time()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code & 1:
        raise SystemExit(f"mutmut failed (exit {code}); see its output above")
    return time.time() - start


def rows(cache: str = CACHE) -> list[tuple[str, str, int, int, str]]:
    if not os.path.exists(cache):
        raise SystemExit(f"no {cache}: run `make mutate` first")
    db = sqlite3.connect(cache)
    # a survivor tested against older tests than this cache's last run is not a result yet
    current = db.execute("SELECT value FROM miscdata WHERE key = 'hash_of_tests'").fetchone()
    return db.execute(
        "SELECT s.filename, l.line, l.line_number, m.\"index\", "
        "CASE WHEN m.status = 'bad_survived' AND m.tested_against_hash != ? THEN 'untested' "
        "ELSE m.status END FROM mutant m "
        "JOIN line l ON m.line = l.id JOIN sourcefile s ON l.sourcefile = s.id "
        "ORDER BY s.filename, l.line_number, m.\"index\"", (current[0] if current else "",)).fetchall()


@functools.lru_cache(maxsize=None)
def _source(filename: str) -> str:
    return open(os.path.join(ROOT, filename)).read()


def _out_of_scope(filename: str, line: str, line_number: int, index: int) -> bool | None:
    from mutmut import RelativeMutationID  # lazy: the mutate extra
    source = _source(filename)
    if source.split("\n")[line_number] != line:
        return None  # a line that has changed since: its mutants are stale
    mutation_id = RelativeMutationID(filename=filename, line=line, index=index, line_number=line_number)
    return mutmut_config.out_of_scope(filename, source, mutation_id)


def _mutated_line(filename: str, line: str, line_number: int, index: int) -> str:
    """The survivor's line as mutated, computed from the source on disk. (Not `mutmut show`
    while a run is going: it rereads the module, mutated at that moment, and rewrites the
    cache's lines, which crashes the run.)"""
    import mutmut
    from mutmut import RelativeMutationID
    source = _source(filename)
    mutation_id = RelativeMutationID(filename=filename, line=line, index=index, line_number=line_number)
    mutated, _ = mutmut.mutate(mutmut.Context(mutation_id=mutation_id, filename=filename, source=source))
    return mutated.split("\n")[line_number].strip()


def report(caches=(CACHE,), show_survivors: bool = True) -> str:
    per: dict[str, dict[str, int]] = {}
    survivors = []
    stale = 0
    # Several caches (runs split across copies of the tree) may hold the same mutant: a kill
    # anywhere counts (killed mutants are never retested), then out of scope, then survived.
    rank = {s: 3 for s in KILLED} | {"skipped": 2, "bad_survived": 1}
    merged: dict[tuple[str, int, str, int], tuple] = {}
    for row in (r for c in caches for r in rows(c)):
        key = (row[0], row[2], row[1], row[3])
        if key not in merged or rank.get(row[4], 0) > rank.get(merged[key][4], 0):
            merged[key] = row
    for filename, line, line_number, index, status in sorted(merged.values(), key=lambda r: (r[0], r[2], r[3])):
        if filename not in mutmut_config.SCOPE:
            continue
        c = per.setdefault(filename, dict(total=0, killed=0, skipped=0, equivalent=0, survived=0,
                                          untested=0))
        c["total"] += 1
        key = (filename, line.strip(), index)
        skip = _out_of_scope(filename, line, line_number, index)  # by today's mutmut_config
        if skip is None:
            c["total"] -= 1
            stale += 1
        elif skip:
            c["skipped"] += 1
        elif status == "skipped":  # skipped by an older scope, in scope today
            c["untested"] += 1
        elif status in KILLED:
            c["killed"] += 1
        elif key in EQUIVALENT:
            c["equivalent"] += 1
        elif status == "untested":
            c["untested"] += 1
        else:
            c["survived"] += 1
            survivors.append(f"{filename}:{line_number + 1} [{index}] `{line.strip()}` -> "
                             f"`{_mutated_line(filename, line, line_number, index)}`")
    out = ["| module | mutants | out of scope | equivalent | killed | survived | score |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    tk = tn = 0
    for filename, c in sorted(per.items()):
        n = c["total"] - c["skipped"] - c["equivalent"] - c["untested"]
        tk, tn = tk + c["killed"], tn + n
        score = f"{100 * c['killed'] / n:.1f}%" if n else "n/a"
        untested = f" ({c['untested']} untested)" if c["untested"] else ""
        out.append(f"| `{filename.removeprefix('seaweed_jax/')}` | {c['total']} | {c['skipped']} | "
                   f"{c['equivalent']} | {c['killed']} | {c['survived']}{untested} | {score} |")
    if tn:
        out.append(f"| **all** | | | | {tk} | {tn - tk} | **{100 * tk / tn:.1f}%** |")
    if stale:
        out.append(f"\n{stale} cached mutants of lines that have changed since were left out; "
                   "rerun those modules.")
    if show_survivors and survivors:
        out += ["", "Survivors (see one with `mutmut show <id>` or `mutmut results`):"]
        out += [f"- {s}" for s in survivors]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="mutate only modules whose path ends with this (repeatable)")
    parser.add_argument("--report", action="store_true", help="print the table, run nothing")
    parser.add_argument("--cache", action="append", default=[],
                        help="with --report: read these .mutmut-cache files (e.g. of runs split "
                             "across copies of the tree); default: this tree's")
    args = parser.parse_args()
    os.chdir(ROOT)  # mutmut and mutmut_config work with paths relative to the repository
    if not args.report:
        paths = [p for p in mutmut_config.SCOPE if not args.only or any(p.endswith(o) for o in args.only)]
        if not paths:
            raise SystemExit(f"--only {args.only} matches no module of mutmut_config.SCOPE: "
                             f"{sorted(mutmut_config.SCOPE)}")
        check_test_ids(paths)
        seconds = run(paths)
        print(f"mutmut wall time {seconds / 60:.1f} min for {len(paths)} module(s)")
    print(report(args.cache or [CACHE]))


if __name__ == "__main__":
    main()
