"""Tools beside the jobs: ``python -m jobs.tools.benchmark``, ``jobs.tools.precision_check``, ``jobs.tools.figures``."""
