"""Hydra launcher `hydra/launcher=gpu_pool`: a local sweep with one run per GPU at a time."""
