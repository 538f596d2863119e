"""The attack-evaluation job: ``python -m jobs.evaluate`` (a registered model under a named protocol)."""
