"""Training metrics: TensorBoard event files, metrics.jsonl and one console line per log.

Only process 0 writes. Throughput is measured on the host between two log points (the log
fetch synchronizes with the device, so the interval covers finished steps). With the FLOPs of
a step known (`flops_per_step`, set by the loop), each train record also has
`tflops_per_sec_per_device` and, when the device's peak is known (trainer/accounting.py; on
CPU measured when timing starts), `mfu` and `hfu` (HFU counts `hardware_flops_per_step`,
i.e. with remat recomputation; it equals MFU when that is not given).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import numpy as np

from seaweed_jax import paths
from seaweed_jax.trainer import accounting


# reported as their latest value in a log interval (the rest are averaged)
LAST_VALUE_KEYS = ("nonfinite_steps", "lr")


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl record (a line cut short by a crash counts as after all)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class MetricsLogger:
    """Accumulates per-step device metrics and writes averaged summaries every log."""

    def __init__(self, workdir: str, *, num_steps: int, global_batch_size: int,
                 flops_per_step: float | None = None, enabled: bool | None = None,
                 resume_step: int = 0, nonfinite_steps: int = 0,
                 hardware_flops_per_step: float | None = None, peak_flops_per_device: float | None = None,
                 peak_source: str = "", num_devices: int | None = None):
        """`resume_step`: the step the run (re)starts from. Records of later steps (logged
        before a crash, after the checkpoint) are dropped from metrics.jsonl, and TensorBoard
        is told to purge them (purge_step), so both curves stay continuous.

        `flops_per_step`: model FLOPs of a step on the global batch (MFU);
        `hardware_flops_per_step`: the same plus remat recomputation (HFU; default: equal);
        `peak_flops_per_device` / `peak_source`: default `accounting.peak_flops()` of the
        first local device, resolved when timing starts; `num_devices`: default all devices."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.num_steps = num_steps
        self.global_batch_size = global_batch_size
        self.flops_per_step = flops_per_step
        self.hardware_flops_per_step = hardware_flops_per_step
        self.peak_flops_per_device = peak_flops_per_device
        self.peak_source = peak_source or ("given" if peak_flops_per_device else "")
        self.num_devices = jax.device_count() if num_devices is None else num_devices
        self._pending: list[dict] = []
        self._window: list[tuple] = []   # (examples, model FLOPs, hardware FLOPs) per pending step
        self._nonfinite_seen = nonfinite_steps
        self.nonfinite_in_a_row = 0   # rejected updates in a row, up to the last log
        self._t0 = None
        self._step0 = None
        self._writer = None
        self._tb_dir = None
        self._jsonl = None
        if self.enabled:
            # lazy: only the writing process (0) loads tensorboardX and its protobuf stack
            from tensorboardX import SummaryWriter
            workdir = paths.run_path(workdir)
            self._tb_dir = paths.MirroredDir(workdir / "tb")  # event files append locally
            self._writer = SummaryWriter(self._tb_dir.local, purge_step=resume_step + 1)
            self._jsonl = paths.AppendLog(workdir / "metrics.jsonl",
                                          keep=lambda line: _step_of(line) <= resume_step)

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def start(self, step: int) -> None:
        """Mark the start of timing (after compilation of the first step, ideally). With the
        FLOPs known, the peak is resolved first (on CPU it is measured: outside the timing)."""
        if self.flops_per_step and not self.peak_source:
            self.resolve_peak()
            if self.enabled:
                print(self.flop_accounting().peak_line(), flush=True)
        self._t0, self._step0 = time.perf_counter(), step

    def resolve_peak(self) -> tuple[float | None, str]:
        """The per-device peak FLOP/s and its source (looked up or measured once)."""
        if not self.peak_source:
            peak, self.peak_source = accounting.peak_flops()
            self.peak_flops_per_device = self.peak_flops_per_device or peak
        return self.peak_flops_per_device, self.peak_source

    def flop_accounting(self) -> accounting.Accounting:
        """The step's FLOPs and the peak as an `accounting.Accounting` (flops_per_step must be set)."""
        return accounting.Accounting(
            model_flops=float(self.flops_per_step),
            hardware_flops=float(self.hardware_flops_per_step or self.flops_per_step),
            num_devices=self.num_devices, peak_flops=self.peak_flops_per_device,
            peak_source=self.peak_source)

    def add(self, metrics: dict, *, examples: int | None = None, flops: tuple | None = None) -> None:
        """Keep a step's (device) metrics; fetched only at log time to avoid syncs. `examples`
        (the step's global batch size) and `flops` ((model, hardware) FLOPs of the step) make
        the window's throughput exact when batch shapes change (data.stages); without them
        every step counts global_batch_size and flops_per_step."""
        self._pending.append(metrics)
        model, hardware = flops or (self.flops_per_step, self.hardware_flops_per_step)
        self._window.append((examples or self.global_batch_size, model, hardware or model))

    def log_train(self, step: int, extra: dict | None = None) -> dict:
        """Average pending metrics, add throughput, write everything. Returns the record."""
        fetched = jax.device_get(self._pending)
        self._pending = []
        record: dict = {"step": int(step)}
        for m in fetched:   # the cumulative counter grows by one per rejected update
            count = int(np.asarray(m.get("nonfinite_steps", self._nonfinite_seen)))
            self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if count > self._nonfinite_seen else 0
            self._nonfinite_seen = count
        if fetched:
            for k in fetched[0]:
                vals = np.asarray([np.asarray(m[k], np.float64) for m in fetched])
                # counters are cumulative: report the latest value, average the rest
                finite = vals[np.isfinite(vals)]
                if k in LAST_VALUE_KEYS:
                    record[k] = float(vals[-1])
                else:  # mean over finite values (rejected non-finite steps are counted apart)
                    record[k] = float(finite.mean()) if finite.size else float("nan")
        now = time.perf_counter()
        if self._t0 is not None and step > self._step0:
            dt = now - self._t0
            sps = (step - self._step0) / dt
            record["steps_per_sec"] = sps
            window = self._window or [(self.global_batch_size, self.flops_per_step,
                                       self.hardware_flops_per_step or self.flops_per_step)]
            examples, model, hardware = (np.mean([w[i] or 0 for w in window]) for i in range(3))
            record["examples_per_sec"] = sps * examples
            record["eta_sec"] = (self.num_steps - step) / sps if sps > 0 else float("inf")
            if model:   # the window's mean FLOPs per step (batch shapes may differ by step)
                record["gflops_per_sec"] = sps * model / 1e9
                record.update(dataclasses.replace(self.flop_accounting(), model_flops=float(model),
                                                  hardware_flops=float(hardware or model)).rates(sps))
        self._window = []
        self._t0, self._step0 = now, step
        record.update(extra or {})
        self._write(step, record, prefix="train")
        if self.enabled:
            print(self._console_line(record), flush=True)
        return record

    def log_eval(self, step: int, metrics: dict) -> None:
        record = {"step": int(step), **{f"eval/{k}": float(v) for k, v in metrics.items()}}
        self._write(step, record, prefix=None)
        if self.enabled and metrics:
            print(f"[eval] step {step} " + " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items()),
                  flush=True)

    def _write(self, step: int, record: dict, prefix: str | None) -> None:
        if not self.enabled:
            return
        for k, v in record.items():
            if k == "step" or not isinstance(v, (int, float)):
                continue
            tag = k if prefix is None or "/" in k else f"{prefix}/{k}"
            self._writer.add_scalar(tag, v, step)
        self._writer.flush()
        self._tb_dir.sync()          # OSError here (full / read-only workdir) reaches the loop
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def _console_line(self, r: dict) -> str:
        parts = [f"step {r['step']}/{self.num_steps}"]
        if "loss" in r:
            parts.append(f"loss {r['loss']:.5g}")
        if "grad_norm" in r:
            parts.append(f"gnorm {r['grad_norm']:.3g}")
        if "steps_per_sec" in r:
            parts.append(f"{r['steps_per_sec']:.2f} steps/s")
            parts.append(f"{r['examples_per_sec']:.1f} ex/s")
        if "gflops_per_sec" in r:
            parts.append(f"{r['gflops_per_sec']:.3g} GFLOP/s")
        if "mfu" in r:
            parts.append(f"MFU {100 * r['mfu']:.3g}%")
        if "eta_sec" in r:
            parts.append(f"ETA {_fmt_duration(r['eta_sec'])}")
        if r.get("nonfinite_steps"):
            parts.append(f"nonfinite {int(r['nonfinite_steps'])}")
        return " | ".join(parts)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._tb_dir.close()
        if self._jsonl is not None:
            self._jsonl.close()
