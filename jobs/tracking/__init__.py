"""MLflow wiring shared by the jobs: connecting, runs, the outbox logger, registered models.

Only the driver and rank 0 (plus the validation task acting for rank 0) talk to MLflow.
"""
