"""The training job: ``python -m jobs.train`` (its entry point only; the run itself is ``jobs.training``)."""
