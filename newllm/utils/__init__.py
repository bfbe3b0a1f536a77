"""Utilities every layer may use: atomic writes, run folders, checkpoints, devices and seeding."""
