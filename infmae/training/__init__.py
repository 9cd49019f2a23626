"""Trainer, optimizer and schedule, checkpoints, metrics, reconstruction images."""
