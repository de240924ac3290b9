"""Training stages (pretraining, continual pretraining, fine-tuning) on one epoch loop, with resume files and
history curves."""
