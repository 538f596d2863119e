"""The search job: ``python -m jobs.tune`` (Ray Tune over the config; each trial a training run)."""
