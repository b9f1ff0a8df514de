"""mutmut 2 hooks for `make mutate`: what is in scope and which tests run against each module.

mutmut imports this file from the working directory. For each mutant, `pre_mutation`
  - skips code outside the scope below (whole modules, or named functions of a module),
  - skips mutants that only change the text of an error or log message, its string literal
    or the values an f-string formats into it (a changed message is not a silent bug; the
    error-table test in tests/test_cli_errors.py covers the messages users see),
  - points the test command at the tests that cover that module, fastest killers first.
Skipped mutants are reported apart and do not count in the score (docs/testing.md).
"""
from __future__ import annotations

import ast
import functools
import os
import re

# The JAX persistent cache lets an unchanged jitted function skip XLA compilation in the next
# mutant's process; a mutated function traces to different HLO, so it misses the cache.
_ENV = ("env JAX_COMPILATION_CACHE_DIR=/tmp/seaweed_mutmut_jax_cache "
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 ")
_PYTEST = _ENV + "python scripts/mutant_tests.py -x -q --no-header -m 'not slow' "

# runs killed and resumed, on the toy task (tests/_toy_task.py)
_RESUME_TESTS = (
    "tests/test_trainer_math.py",
    "tests/test_trainer.py::test_exact_resume_matches_uninterrupted_run",
    "tests/test_reliability.py::test_foreign_workdir_is_refused_before_anything_is_written",
    "tests/test_reliability.py::test_unreadable_latest_checkpoint_falls_back_to_the_previous_one",
    "tests/test_reliability.py::test_sigint_saves_the_current_step_and_resumes",
)

# module -> (functions in scope, or None for the whole module; test files, fastest killers first)
SCOPE: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    "seaweed_jax/diffusion/flow.py": (None, ("tests/test_diffusion_math.py", "tests/test_flow.py")),
    "seaweed_jax/diffusion/samplers.py": (None, ("tests/test_diffusion_math.py", "tests/test_samplers.py")),
    "seaweed_jax/diffusion/distill.py": (None, ("tests/test_diffusion_math.py",)),
    "seaweed_jax/diffusion/refine.py": (None, ("tests/test_diffusion_math.py", *(
        "tests/test_refine.py::" + t for t in (
            "test_scaled_linear_alpha_bar_by_hand", "test_latent_degradation_by_hand",
            "test_one_euler_step_with_the_exact_velocity_lands_on_x1",
            "test_refine_shift_favours_the_degraded_start")))),
    "seaweed_jax/diffusion/packed.py": (None, ("tests/test_diffusion_math.py",)),
    "seaweed_jax/models/vae/causal_conv.py": (None, ("tests/test_reference_values.py", "tests/test_vae_math.py",
                                                     "tests/test_odvae.py", "tests/test_vae_multidevice.py")),
    "seaweed_jax/models/vae/haar.py": (None, ("tests/test_vae_math.py", "tests/test_haar.py")),
    "seaweed_jax/models/vae/codec.py": (("VAECodec.normalize", "VAECodec.denormalize"), ("tests/test_vae_math.py",)),
    "seaweed_jax/models/dit/rope.py": (None, ("tests/test_dit_math.py", "tests/test_rope.py")),
    "seaweed_jax/models/dit/modulation.py": (None, ("tests/test_dit_math.py",)),
    "seaweed_jax/kernels/masks.py": (None, ("tests/test_kernel_math.py", "tests/test_attention.py")),
    "seaweed_jax/kernels/reference.py": (None, ("tests/test_kernel_math.py", "tests/test_attention.py")),
    "seaweed_jax/kernels/splash.py": (None, ("tests/test_kernel_math.py", "tests/test_splash.py")),
    "seaweed_jax/kernels/__init__.py": (None, ("tests/test_kernel_math.py", "tests/test_attention.py")),
    "seaweed_jax/kernels/options.py": (None, ("tests/test_kernel_math.py", "tests/test_attention.py")),
    "seaweed_jax/trainer/ema.py": (None, ("tests/test_trainer_math.py", "tests/test_reference_values.py::test_ema_after_updates_is_the_closed_form")),
    "seaweed_jax/trainer/optimizers.py": (None, ("tests/test_trainer_math.py", *(
        "tests/test_trainer.py::" + t for t in (
            "test_schedule_warmup_then_cosine_and_constant", "test_grad_accumulation_equals_big_batch",
            "test_global_norm_clipping")))),
    "seaweed_jax/eval/metrics.py": (None, ("tests/test_metrics.py",)),
    # the resume path: what decides where a run restarts and with which state
    "seaweed_jax/checkpoint.py": (
        ("save", "restore", "_iterator_files", "_saved_process_count", "_iterator_state",
         "restore_iterator", "latest_step", "run_identity", "refuse_foreign", "_flat",
         "set_aside", "_move_tree"),
        _RESUME_TESTS),
    "seaweed_jax/trainer/loop.py": (
        ("init_rng", "step_rng", "_restore_readable", "restore_state"),
        _RESUME_TESTS),
}

_LOG_CALLS = {"print", "_print", "warn", "warning", "info", "error", "debug", "exception"}


@functools.lru_cache(maxsize=None)
def _line_facts(filename: str):
    """For each 1-based line: the qualified name of its enclosing function (or None), and
    whether it lies inside a raise statement or a print/log/warn call."""
    tree = ast.parse(open(filename).read())
    owner: dict[int, str] = {}
    message: set[int] = set()

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                for line in range(child.lineno, child.end_lineno + 1):
                    owner[line] = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    for node in ast.walk(tree):
        is_log = (isinstance(node, ast.Call) and
                  getattr(node.func, "id", getattr(node.func, "attr", None)) in _LOG_CALLS)
        if isinstance(node, ast.Raise) or is_log:
            message.update(range(node.lineno, node.end_lineno + 1))
    return owner, message


def _in_scope(function: str | None, allowed: tuple[str, ...]) -> bool:
    return function is not None and any(function == a or function.startswith(a + ".") for a in allowed)


# a string literal, f-strings included (their {expressions} are part of the message)
_STRING = re.compile(r"""[rbfuRBFU]*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _changes_only_a_string(old: str, new: str) -> bool:
    """Whether every character that differs between the two lines lies inside one string literal
    of the original line."""
    if old == new:
        return False
    first = next(i for i, (a, b) in enumerate(zip(old + "\0", new + "\0")) if a != b)
    tail = next(i for i, (a, b) in enumerate(zip(old[::-1] + "\0", new[::-1] + "\0")) if a != b)
    last = len(old) - tail  # one past the last changed character of the original
    return any(m.start() <= first and last <= m.end() for m in _STRING.finditer(old))


def out_of_scope(filename: str, source: str, mutation_id) -> bool:
    """Whether a mutant is skipped: outside the module's functions in SCOPE, or a change to the
    text of an error or log message (its literal or the values it formats)."""
    import mutmut  # lazy: only importable where the mutate extra is installed
    if filename not in SCOPE:
        return True
    functions, _ = SCOPE[filename]
    owner, message = _line_facts(filename)
    line = mutation_id.line_number + 1
    if functions is not None and not _in_scope(owner.get(line), functions):
        return True
    if line not in message:
        return False
    mutated, _ = mutmut.mutate(mutmut.Context(mutation_id=mutation_id, filename=filename, source=source))
    return _changes_only_a_string(source.split("\n")[line - 1], mutated.split("\n")[line - 1])


def pre_mutation(context):
    if out_of_scope(context.filename, context.source, context.mutation_id):
        context.skip = True
        return
    tests = existing(SCOPE[context.filename][1])
    if not tests:  # never let pytest fall back to the whole tests/ directory
        raise RuntimeError(f"no test file of {SCOPE[context.filename][1]} exists for {context.filename}")
    context.config.test_command = _PYTEST + " ".join(tests)


def existing(tests) -> list[str]:
    """The test files that exist (a module's dedicated tests may not be written yet)."""
    return [t for t in tests if os.path.exists(t.split("::")[0])]
