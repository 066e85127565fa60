"""Surfing Weights: transformer inference on workers that never hold the whole model."""

__version__ = "0.1.0"
