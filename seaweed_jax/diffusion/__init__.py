"""Flow matching (`flow`: path, timesteps, loss, CFG dropout, multi-task conditioning) and ODE
samplers (`samplers`: Euler / Heun with CFG on shifted grids)."""
from seaweed_jax.diffusion import flow, samplers
from seaweed_jax.diffusion.flow import (EXTEND, I2V, T2I, T2V, TASK_NAMES, apply_condition,
                                        build_condition,
                                        drop_text, empty_condition, flow_matching_loss,
                                        interpolate, make_multitask_batch, noisy_inputs,
                                        sample_timesteps, shift_for_tokens, shift_t,
                                        velocity_target)
from seaweed_jax.diffusion.samplers import SampleResult, cfg_combine, count_nfe, sample, timestep_grid

__all__ = ["flow", "samplers", "EXTEND", "I2V", "T2I", "T2V", "TASK_NAMES", "apply_condition", "build_condition",
           "drop_text", "empty_condition", "flow_matching_loss", "interpolate",
           "make_multitask_batch", "noisy_inputs", "sample_timesteps", "shift_for_tokens",
           "shift_t", "velocity_target", "SampleResult", "cfg_combine", "count_nfe", "sample",
           "timestep_grid"]
