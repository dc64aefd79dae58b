"""Plumbing shared by the train_*.py scripts (GLUE data, metrics, launch, checkpoints); it knows no method."""
