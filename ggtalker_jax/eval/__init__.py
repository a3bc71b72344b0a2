"""ggtalker_jax.eval: metrics (PSNR, SSIM, LMD, sync, AUE, timing), LPIPS from local weights, plots.

Submodules are imported explicitly (``from ggtalker_jax.eval import metrics, lpips, plots``) so that
importing the package stays light (no matplotlib / mediapipe until needed).
"""
