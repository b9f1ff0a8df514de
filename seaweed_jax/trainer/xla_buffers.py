"""Where a compiled program's temporary memory goes, read from XLA's dump of it.

XLA's buffer assignment packs every temporary of a module into one preallocated buffer per
memory space (colour 0: device memory; on TPU colour 5 is the host). On XLA:CPU its size is
what `compiled.memory_analysis()` calls temp bytes; on TPU libtpu's `memory_analysis()` can
report much more (1.17-1.47x this buffer on the 7B steps dumped) while its compile-time HBM
check admits the program (README, planner section). The buffer can itself exceed what is ever
live at once: the heap simulator leaves gaps. `read_dump` takes the module's buffer assignment (each value's offset and
size in that buffer) and its live ranges (each value's first and last step of the flattened
schedule) and reports, per colour:
* `temp_bytes`: the preallocated buffer's size;
* `max_live_bytes` and `max_live_step`: the most bytes live at any one step, and that step;
* `fragmentation`: 1 - max_live / temp (the share of the buffer that packing costs);
* `largest_live`: the `top` largest values live at that step, with their HLO op_name
  (the jax function path, from the optimized HLO's metadata) when the dump has it and their
  live range `[first, last]` step, against `schedule_steps`, the last step of any value: a
  layer's value whose range runs far past that layer's backward is kept for a late consumer.
Works for any backend's dump (TPU via libtpu, or XLA:CPU, whose files say cpu_after_...).
Used by `scripts/xla_memory.py` and by `aot.compile_train_step(read_xla_buffers=True)`.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile

# buffer assignment: "allocation 2652: size 22551708000, preallocated-temp:" (colour 0) or
# "allocation 2654: size 14591983616, color 5, preallocated-temp:", then one line per value:
# " value: <40767 wide.param.1{56} (phi) @0> (size=455081984,offset=597524480): f32[...]"
_ALLOC = re.compile(r"^allocation (\d+): size (\d+), (?:color (\d+), )?preallocated-temp", re.M)
_VALUE = re.compile(r"value: <\d+ ([^ >]+)(?: \([^)]*\))? @\d+> \(size=(\d+),offset=(\d+)\)")
# live ranges, under "BufferLiveRange:": "    dynamic-update-slice.312{}:3154-5356"
_RANGE = re.compile(r"^ {4}([^\s:]+):(\d+)-(\d+)", re.M)


def _key(name: str) -> str:
    """A value's name as both dumps spell it: 'fusion.3{}' (a tuple's top level) -> 'fusion.3'."""
    return name[:-2] if name.endswith("{}") else name


def find_module(dump: str, module: str | None) -> str:
    """The path prefix (up to 'after_optimizations') of the dumped module to read: the one
    whose name contains `module`, else the one with the largest buffer assignment."""
    files = glob.glob(os.path.join(dump, "*after_optimizations-buffer-assignment.txt"))
    if module:
        files = [f for f in files if module in os.path.basename(f)]
    if not files:
        raise ValueError(f"no *after_optimizations-buffer-assignment.txt"
                         f"{f' for module {module!r}' if module else ''} in {dump}; "
                         f"compile with XLA_FLAGS=--xla_dump_to={dump}")
    return max(files, key=os.path.getsize)[: -len("-buffer-assignment.txt")]


def temp_allocations(buffer_assignment: str) -> dict[int, tuple[int, list[tuple[str, int, int]]]]:
    """colour -> (size, [(value name, size, offset)]) of the largest preallocated-temp allocation."""
    out = {}
    for m in _ALLOC.finditer(buffer_assignment):
        body = buffer_assignment[m.end():].split("\nallocation ", 1)[0]   # up to the next allocation
        color, size = int(m.group(3) or 0), int(m.group(2))
        values = [(_key(n), int(s), int(o)) for n, s, o in _VALUE.findall(body)]
        if len(values) != body.count(" value: <"):
            raise ValueError(f"allocation {m.group(1)}: parsed {len(values)} of {body.count(' value: <')} "
                             f"value lines; the buffer-assignment format changed (update _VALUE)")
        if color not in out or size > out[color][0]:
            out[color] = (size, values)
    return out


def live_ranges(live_range_text: str) -> dict[str, tuple[int, int]]:
    """Value name -> (first, last) step of the flattened schedule."""
    if "BufferLiveRange:" not in live_range_text:
        raise ValueError("the live-range dump has no BufferLiveRange section: a truncated file, or an "
                         "XLA that writes another format; recompile with --xla_dump_to")
    text = live_range_text[live_range_text.index("BufferLiveRange:"):]
    end = text.find("Live ranges at")
    ranges = {}
    for name, start, stop in _RANGE.findall(text if end < 0 else text[:end]):
        ranges[_key(name)] = (int(start), int(stop))
    return ranges


def op_names(hlo: str) -> dict[str, str]:
    """Instruction name -> the jax function path XLA kept as metadata (op_name)."""
    return dict(re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo, re.M))


def _union_bytes(intervals) -> int:
    """Bytes covered by [offset, end) intervals: values that alias one buffer count once."""
    total, reach = 0, -1
    for lo, hi in sorted(intervals):
        if hi > reach:
            total += hi - max(lo, reach)
            reach = hi
    return total


def analyse(size: int, values, ranges, names, top: int) -> dict:
    """The most bytes of the buffer in use at once (a step where a value starts: the union of
    the live values' [offset, offset + size) ranges) and the largest values live then."""
    timed = sorted((ranges[n][0], ranges[n][1], o, s, n) for n, s, o in values if n in ranges)
    if not timed:
        return {"temp_bytes": size, "max_live_bytes": None, "values": len(values),
                "values_without_live_range": len(values), "largest_live": []}
    best, best_step, active, i = -1, 0, [], 0
    while i < len(timed):
        step = timed[i][0]
        while i < len(timed) and timed[i][0] == step:
            active.append(timed[i])
            i += 1
        active = [v for v in active if v[1] >= step]
        used = _union_bytes((o, o + s) for _, _, o, s, _ in active)
        if used > best:
            best, best_step = used, step
    at_peak = sorted(((s, n, start, stop) for start, stop, _, s, n in timed if start <= best_step <= stop),
                     key=lambda v: (-v[0], v[1]))
    return {"temp_bytes": size, "max_live_bytes": best, "max_live_step": best_step,
            "schedule_steps": max(stop for _, stop in ranges.values()),
            "fragmentation": round(1 - best / size, 4) if size else 0.0,
            "values": len(values), "values_without_live_range": len(values) - len(timed),
            "largest_live": [{"name": n, "bytes": s, "op_name": names.get(n.split("{", 1)[0], ""),
                              "live": [start, stop]} for s, n, start, stop in at_peak[:top]]}



def read_dump(dump: str, module: str | None = None, top: int = 12) -> dict:
    """{"module": file prefix, "colors": {colour: analyse(...)}} of one dumped module."""
    prefix = find_module(dump, module)
    ranges_path, hlo_path = prefix + "-live-range.txt", prefix + ".txt"
    if not os.path.exists(ranges_path):
        raise ValueError(f"{ranges_path} is missing: dump with a jaxlib / libtpu that writes "
                         f"*-live-range.txt (jax 0.10 does)")
    with open(ranges_path) as f:
        ranges = live_ranges(f.read())
    names = {}
    if top > 0 and os.path.exists(hlo_path):   # op names only label the values listed
        with open(hlo_path) as f:
            names = op_names(f.read())
    with open(prefix + "-buffer-assignment.txt") as f:
        allocations = temp_allocations(f.read())
    per_color = {str(c): analyse(size, values, ranges, names, top)
                 for c, (size, values) in sorted(allocations.items())}
    if per_color.get("0", {}).get("max_live_bytes") is None:
        raise ValueError("no value of the device temp buffer (colour 0) has a live range: compare the "
                         "names under BufferLiveRange with the buffer assignment's; dumped by another XLA?")
    return {"module": os.path.basename(prefix), "colors": per_color}


@contextlib.contextmanager
def temporary_dump(enabled: bool = True):
    """A local folder for `compile(compiler_options={"xla_dump_to": ...})`, removed on exit;
    None when not enabled."""
    if not enabled:
        yield None
        return
    dump = tempfile.mkdtemp(prefix="seaweed_xla_dump_")
    try:
        yield dump
    finally:
        shutil.rmtree(dump, ignore_errors=True)
