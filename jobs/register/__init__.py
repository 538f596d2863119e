"""Registering a checkpoint of a run after the fact: ``python -m jobs.register``."""
