"""The local Ray head and MLflow server: ``python -m infra.local.stack up|down|status``."""
