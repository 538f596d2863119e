"""Entry points of the Ray/MLflow job layer; each job is ``python -m jobs.<job>``."""
from .openmp import use_passive_openmp

use_passive_openmp()  # before any job module imports torch (jobs/openmp.py says why)
