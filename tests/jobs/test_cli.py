"""jobs.cli: one command-line convention and one exit-code table for every job."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from jobs.cli import ExitCode, config_fields, exit_code_of, job_parser, run_main
from jobs.config import JobConfig
from jobs.errors import (
    CheckpointError, EvaluationInputError, ModelNotFoundError, NonFiniteLossError, NothingToRegisterError,
    RunInUseError, TrackingUnavailableError,
)
from jobs.tune.space import SpaceError
from stable_snn.config import ConfigError
from stable_snn.data import DatasetNotFoundError
from tests.jobs.helpers import REPO


def test_the_exit_code_table():
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("DONE", 0), ("FAILURES", 1), ("BAD_INPUT", 2), ("TRACKING_UNREACHABLE", 3), ("NONFINITE_LOSS", 4)]


@pytest.mark.parametrize("error, code", [
    (ConfigError("x"), 2), (SpaceError("x"), 2), (DatasetNotFoundError("x"), 2), (CheckpointError("x"), 2),
    (RunInUseError("x"), 2), (ModelNotFoundError("x"), 2), (NothingToRegisterError("x"), 2),
    (EvaluationInputError("x"), 2), (TrackingUnavailableError("x"), 3), (NonFiniteLossError("x"), 4),
    (RuntimeError("x"), None), (ValueError("x"), None), (KeyError("x"), None),
])
def test_known_failures_map_to_their_code_and_others_to_none(error, code):
    assert exit_code_of(error) == code


def _failing(error):
    def main(args):
        raise error
    return main


def test_run_main_prints_one_error_line_and_returns_the_code(capsys):
    parser = job_parser("jobs.example", "An example job.")
    assert run_main(_failing(TrackingUnavailableError("server gone")), parser, []) == 3
    assert capsys.readouterr().err == "error: server gone\n"
    assert run_main(lambda args: ExitCode.FAILURES, parser, []) == 1


def test_run_main_keeps_the_traceback_of_unexpected_failures():
    with pytest.raises(ZeroDivisionError):
        run_main(_failing(ZeroDivisionError("bug")), job_parser("jobs.example", None), [])


def test_config_fields_lists_every_section_and_field():
    listed = config_fields(JobConfig)
    for section in dataclasses.fields(JobConfig):
        for f in dataclasses.fields(section.default_factory):
            assert f.name in listed.split(f"{section.name}.{{")[1].split("}")[0].split(","), (section.name, f.name)


@pytest.mark.parametrize("job", ["train", "tune", "register"])
def test_jobs_with_a_config_take_config_and_set(job):
    out = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--config CONFIG" in out.stdout and "--set KEY=VALUE" in out.stdout
    assert "Exit status (jobs.cli.ExitCode)" in out.stdout
    if job == "train":
        assert "run.{name,seed,num_workers,use_gpu,cpus_per_worker,placement_strategy,validation_cpus" in out.stdout


JOB_ARGS = {
    "train": ["--config", "jobs/configs/quick.yaml"],
    "tune": ["--space", "tune_spaces/rho-grid.yaml", "--config", "jobs/configs/quick.yaml"],
    "evaluate": ["--model-uri", "models:/m@a", "--protocol", "quick"],
    "register": ["--config", "jobs/configs/quick.yaml", "--set", "run.name=r"],
}


@pytest.mark.parametrize("job", sorted(JOB_ARGS))
def test_every_job_exits_3_with_one_line_when_the_tracking_server_is_unreachable(job, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(REPO)
    main = importlib.import_module(f"jobs.{job}.__main__").main
    assert main(JOB_ARGS[job]) == ExitCode.TRACKING_UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable") and err.count("\n") == 1


def test_every_job_ends_through_the_exit_code_table_and_the_readme_shows_it():
    jobs = sorted(p.parent.name for p in (REPO / "jobs").glob("*/__main__.py"))
    assert jobs == sorted(JOB_ARGS)
    for job in jobs:
        source = (REPO / "jobs" / job / "__main__.py").read_text()
        assert "return run_main(" in source and "sys.exit(main())" in source, job
        assert "Exit status (jobs.cli.ExitCode)" in source, job
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"\n| {int(code)} | " in readme, code
