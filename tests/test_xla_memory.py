"""scripts/xla_memory.py on a real XLA:CPU dump: the temp buffer it reads is the one
`compiled.memory_analysis()` reports, and its most-live-at-once figure is a union of the dumped
values' byte ranges (never more than the buffer)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Forward + backward of two tanh layers: a handful of temporaries with overlapping lives.
PROGRAM = """
import jax, jax.numpy as jnp
def chain(x, w):
    a = jnp.tanh(x @ w)
    b = jnp.tanh(a @ w.T)
    return jnp.sum(jnp.concatenate([a, b], 1) ** 2)
compiled = jax.jit(jax.grad(chain)).lower(jnp.ones((256, 512)), jnp.ones((512, 512))).compile()
print(compiled.memory_analysis().temp_size_in_bytes)
"""


def test_xla_memory_reads_a_cpu_dump(tmp_path):
    dump = tmp_path / "dump"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_dump_to={dump}")
    compiled = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                              text=True, check=True)
    temp = int(compiled.stdout.strip().splitlines()[-1])
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "xla_memory.py"), str(dump),
                        "--module=jit_chain", "--top=3"], capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "jit_chain" in out["module"]
    device = out["colors"]["0"]
    assert device["temp_bytes"] == temp > 0
    assert 0 < device["max_live_bytes"] <= device["temp_bytes"]
    assert device["fragmentation"] == round(1 - device["max_live_bytes"] / device["temp_bytes"], 4)
    assert device["values"] > 0 and device["values_without_live_range"] == 0
    sizes = [v["bytes"] for v in device["largest_live"]]
    assert 0 < len(sizes) <= 3 and sizes == sorted(sizes, reverse=True)
    # the (256, 1024) float32 concatenation is the largest temporary, live at the peak
    assert device["largest_live"][0]["bytes"] == 256 * 1024 * 4
    assert device["largest_live"][0]["op_name"].startswith("jit(chain)/")
    assert "colour 0: temp" in r.stderr


def test_xla_memory_says_how_to_make_a_dump(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "xla_memory.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--xla_dump_to=" in r.stderr
