"""Test setup: 8 fake CPU devices for mesh/sharding tests, float32 everywhere.

Runs serially or under pytest-xdist with `-n 2 --dist loadfile --no-loadscope-reorder`: a
file's tests stay in one worker, so its module fixtures are built once, and the slowest files
go out first."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O0: the suite's time is mostly XLA:CPU compiling tiny programs, about half of it in
# LLVM's optimizer, and at these sizes the slower code costs less than that. Tests compare
# programs compiled alike; set XLA_FLAGS yourself to test at the default level.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

import _dit_helpers as H  # noqa: E402

# The files that take longest (rough sums of their --durations in a serial `make test`), slowest first.
# Under xdist they are collected first, so with --dist loadfile --no-loadscope-reorder each
# worker starts on a big file and the run ends on small ones (longest-first scheduling);
# xdist's default order (most tests first) would leave the notebooks (3 tests, ~210 s) last.
SLOW_FILES_FIRST = (
    "test_colab.py",            # ~210 s: three notebooks
    "test_dit_scan.py",         # ~125 s
    "test_refine.py",           # ~115 s
    "test_distill.py",          # ~90 s
    "test_aot.py",              # ~60 s
    "test_benchmarks_smoke.py", # ~60 s: 7 benchmark subprocesses (the 8th, odvae, ~42 s, is slow)
    "test_vae_scan.py",         # ~45 s
    "test_vae_task.py",         # ~40 s
    "test_dit_task.py",         # ~35 s
    "test_dit_step_bench.py",   # ~30 s
    "test_cli_errors.py",       # ~30 s
    "test_ulysses.py",          # ~26 s
    "test_vae_model.py",        # ~25 s
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return                  # serial runs keep the usual (alphabetical) order
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable within a file


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    """One data dir shared by the tests of a run, and by its xdist workers (datasets built
    once: datasets.build takes a file lock and re-checks, as two hosts on one disk would)."""
    path = H.run_tmp_root(tmp_path_factory) / "seaweed_data"
    path.mkdir(exist_ok=True)
    return str(path)
