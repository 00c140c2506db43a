"""cpm_lightning: Convolutional Pose Machines with Lightning, Hydra and W&B."""

__version__ = "0.1.0"
