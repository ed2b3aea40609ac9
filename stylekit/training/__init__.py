"""Training code for the bundled models (the `mini` diffusion model)."""
