"""Evaluation: `metrics` (PSNR / SSIM on uint8 videos) and `reconstruction` (VAE evaluators that
take predict functions). The moving_shapes prompt checker lives in
`seaweed_jax.moving_shapes.checker`."""
from seaweed_jax.eval.metrics import (mean_psnr, mean_ssim, psnr, psnr_per_video, ssim,
                                      ssim_frames, ssim_per_video)

__all__ = ["mean_psnr", "mean_ssim", "psnr", "psnr_per_video", "ssim", "ssim_frames",
           "ssim_per_video"]
