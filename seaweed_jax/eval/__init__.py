"""Evaluation: `metrics` (PSNR / SSIM on uint8 videos) and `prompt_checker` (does a generated
moving_shapes video show its prompt's colour, shape and direction; import it directly)."""
from seaweed_jax.eval.metrics import (mean_psnr, mean_ssim, psnr, psnr_per_video, ssim,
                                      ssim_frames, ssim_per_video, to_uint8)

__all__ = ["mean_psnr", "mean_ssim", "psnr", "psnr_per_video", "ssim", "ssim_frames",
           "ssim_per_video", "to_uint8"]
