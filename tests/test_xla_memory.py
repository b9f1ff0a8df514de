"""scripts/xla_memory.py: the most bytes live at once in XLA's temp buffer.

A hand-written dump pins the arithmetic (loop-carried "(phi)" values, tuple elements, two values
that share one buffer, a host colour, an allocation without live ranges); a real XLA:CPU dump of
a scanned program checks that the script reads every value of the buffer that
`compiled.memory_analysis()` reports."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "xla_memory.py")

# Steps 0-9. Colour 0, a 400-byte buffer: a [0,100) live 0-4, b [100,300) live 2-6 (a tuple
# element), c [0,100) live 5-9 (reuses a's bytes after a dies), d [100,200) the loop-carried
# alias of b live 3-4 (the same bytes: counted once). Most live: steps 2-4, a + b = 300 bytes.
BUFFER_ASSIGNMENT = """BufferAssignment:
allocation 0: size 64, parameter 0, shape |f32[16]| at ShapeIndex {}:
 value: <1 p @0> (size=64,offset=0): f32[16]{0}
allocation 1: size 400, preallocated-temp:
 value: <2 a @0> (size=100,offset=0): f32[25]{0}
 value: <3 b{1} @0> (size=200,offset=100): f32[50]{0}
 value: <4 c @0> (size=100,offset=0): f32[25]{0}
 value: <5 b.carry{1} (phi) @0> (size=100,offset=100): f32[25]{0}
allocation 2: size 80, color 5, preallocated-temp:
 value: <6 h @0> (size=80,offset=0): f32[20]{0:S(5)}
allocation 3: size 8, color 1, preallocated-temp:
 value: <7 nolive @0> (size=8,offset=0): f32[2]{0}
"""
LIVE_RANGES = """HloLiveRange (max 9):
  InstructionSequence:
    0:p
  BufferLiveRange:
    p{}:0-9
    a{}:0-4
    b{1}:2-6
    c{}:5-9
    b.carry{1}:3-4
    h{}:1-3
  Live ranges at 3 (peak):
"""
HLO = """HloModule jit_toy
ENTRY %main {
  %a = f32[25]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(toy)/a_op"}
  %b = (f32[1], f32[50]) fusion(%a), kind=kLoop, metadata={op_name="jit(toy)/b_op"}
  ROOT %c = f32[25]{0} add(%a, %a), metadata={op_name="jit(toy)/c_op"}
}
"""


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def test_xla_memory_arithmetic_on_a_written_dump(tmp_path):
    prefix = tmp_path / "module_0001.jit_toy.cpu_after_optimizations"
    (tmp_path / f"{prefix.name}-buffer-assignment.txt").write_text(BUFFER_ASSIGNMENT)
    (tmp_path / f"{prefix.name}-live-range.txt").write_text(LIVE_RANGES)
    (tmp_path / f"{prefix.name}.txt").write_text(HLO)
    r = _run(str(tmp_path), "--top=5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    device = out["colors"]["0"]
    assert (device["temp_bytes"], device["max_live_bytes"], device["max_live_step"]) == (400, 300, 2)
    assert device["fragmentation"] == 0.25
    assert (device["values"], device["values_without_live_range"]) == (4, 0)
    assert [(v["name"], v["bytes"], v["op_name"], v["live"]) for v in device["largest_live"]] == [
        ("b{1}", 200, "jit(toy)/b_op", [2, 6]), ("a", 100, "jit(toy)/a_op", [0, 4])]
    assert device["schedule_steps"] == 9
    host = out["colors"]["5"]
    assert (host["temp_bytes"], host["max_live_bytes"], host["fragmentation"]) == (80, 80, 0.0)
    assert out["colors"]["1"]["max_live_bytes"] is None          # no live ranges: reported, not fatal
    assert "colour 1: temp 0.00 MiB, no live ranges" in r.stderr


def test_xla_memory_reads_a_cpu_dump_of_a_scan(tmp_path):
    dump = tmp_path / "dump"
    program = """
import jax, jax.numpy as jnp
def loss(x, ws):
    def layer(h, w):
        return jnp.tanh(h @ w), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.sum(h ** 2)
compiled = jax.jit(jax.grad(loss, argnums=1)).lower(jnp.ones((256, 512)), jnp.ones((4, 512, 512))).compile()
print(compiled.memory_analysis().temp_size_in_bytes)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_dump_to={dump}")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)     # a cache hit would compile (and dump) nothing
    compiled = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    temp = int(compiled.stdout.strip().splitlines()[-1])
    r = _run(str(dump), "--module=jit_loss", "--top=3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    device = out["colors"]["0"]
    assert device["temp_bytes"] == temp > 0
    assert 0 < device["max_live_bytes"] <= device["temp_bytes"]
    # every value line of that temp allocation was read, and each has a live range
    ba = next(f for f in os.listdir(dump) if "jit_loss" in f and f.endswith("after_optimizations-buffer-assignment.txt"))
    text = open(dump / ba).read()
    alloc = re.search(rf"allocation \d+: size {temp}, preallocated-temp:\n(.*?)(?=\nallocation |\Z)", text, re.S)
    assert device["values"] == alloc.group(1).count(" value: <") > 0
    assert device["values_without_live_range"] == 0
    sizes = [v["bytes"] for v in device["largest_live"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0


def test_xla_memory_says_how_to_make_a_dump(tmp_path):
    r = _run(str(tmp_path))
    assert r.returncode != 0 and "--xla_dump_to=" in r.stderr
