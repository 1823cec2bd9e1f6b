"""Training of the dual-output 3D U-Net: presets, losses, the trainer (AMP, resume, DDP) and cross-validation."""
