"""Training: device selection, resumable checkpoints, the epoch loop, pretraining and continual pretraining."""
