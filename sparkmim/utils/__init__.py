"""Shared utilities: one home each for checkpoint I/O, distributed setup, schedules, logging,
configuration and robust image loading. Pre-training, fine-tuning and the tools all import from here."""
