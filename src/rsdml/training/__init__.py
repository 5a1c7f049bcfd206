"""Training: methods, the trainer loop and checkpoints."""
