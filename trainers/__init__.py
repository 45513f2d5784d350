"""Trainers: the CLI, the config schema, the training loops, logging and checkpoints.

``trainers`` is the only package that owns the loop, the logger and checkpoints.
"""
