"""Versioned, verified model weights (safetensors + manifest.json + model card)."""

from app.weights.registry import LoadedWeights, WeightsError, load_weights, save_weights

__all__ = ["LoadedWeights", "WeightsError", "load_weights", "save_weights"]
