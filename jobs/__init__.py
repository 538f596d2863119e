"""Entry points of the Ray/MLflow job layer; each job is ``python -m jobs.<job>``."""
