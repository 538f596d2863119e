"""The Tune job: spaces, their trials and the dry run, the report (fast), and real searches on a real Ray
cluster and MLflow server (slow)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from jobs.config import load_job_config
from jobs.tune.__main__ import dry_run_lines, main as tune_main, reserved_trial_cpus
from jobs.tune.search import param_space, tpe_samples
from jobs.tune.score import with_score
from jobs.tune.space import SCORE, SpaceError, expand_trials, load_space, parse_space
from jobs.tune.trial import TRIAL_KEY, point_tag, trial_config, trial_values
from tests.fixtures_runs import child_runs
from tests.jobs.helpers import QUICK, REPO, job_env

SPACES = sorted((REPO / "tune_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def base():
    return load_job_config(QUICK)


# what each shipped space hands Tune: TPE its distributions by field, grid and random one list of trials
SHIPPED_TUNE_KEYS = {
    "reg-strength": {TRIAL_KEY}, "rho-chi": {"objective.rho", "objective.chi"}, "rho-grid": {TRIAL_KEY},
    "table2": {TRIAL_KEY}, "table2-cpu": {TRIAL_KEY},
}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_parses_and_validates(path, base):
    space = load_space(path, base)
    assert space.name == path.stem
    assert space.params
    assert set(param_space(space)) == SHIPPED_TUNE_KEYS[path.stem]


def test_shipped_spaces_cover_the_paper(base):
    names = {p.stem for p in SPACES}
    assert {"rho-grid", "rho-chi", "reg-strength", "table2"} <= names
    grid = load_space(REPO / "tune_spaces" / "rho-grid.yaml", base)
    assert grid.params[0].values == (0.0, 0.5, 1.0, 2.0)
    t2 = load_space(REPO / "tune_spaces" / "table2.yaml", base)
    assert {p.key for p in t2.params} == {"model.neuron", "objective.regularizer"} and t2.fixed["objective.rho"] == 1.0
    assert "mppd_tv_l1" in next(p for p in t2.params if p.key == "objective.regularizer").values


def test_table2_cpu_is_three_points_times_two_seeds_with_one_rho0_point_per_seed():
    """rho in {0, 1} x regulariser where rho > 0, replicated over seeds 0 and 1: six trials, no duplicate
    rho = 0 trials; the report groups them by point with the seed left out."""
    space = load_space(REPO / "tune_spaces" / "table2-cpu.yaml", load_job_config(REPO / "jobs/configs/ablation-cpu.yaml"))
    trials = expand_trials(space)
    assert len(trials) == 6 and len({point_tag(t) + str(t["run.seed"]) for t in trials}) == 6
    assert sorted(t["run.seed"] for t in trials) == [0, 0, 0, 1, 1, 1]
    assert sum(t["objective.rho"] == 0.0 for t in trials) == 2
    assert {t.get("objective.regularizer") for t in trials if t["objective.rho"] == 1.0} == {"ms_mppd", "mppd_tv_l1"}
    assert space.searched_keys == ["objective.rho", "objective.regularizer"] and space.test_images == 2000
    assert param_space(space)[TRIAL_KEY] == {"grid_search": trials}  # what Tune runs is what the dry run prints


def test_table2_cpu_runs_two_single_threaded_trials_side_by_side_on_two_cores():
    """Each trial validates inline in its one worker, so one trial at a time kept one of two cores idle:
    the space runs two, and a driver's and a worker's reservations for both fit 2 CPUs."""
    from jobs.threads import threads_for

    cfg = load_job_config(REPO / "jobs/configs/ablation-cpu.yaml")
    space = load_space(REPO / "tune_spaces" / "table2-cpu.yaml", cfg)
    assert space.max_concurrent_trials == 2 and cfg.run.num_workers == 1
    assert space.trial_cpus + cfg.run.cpus_per_worker <= 1.0 and threads_for(cfg.run.cpus_per_worker) == 1


def test_trial_cpus_come_from_the_flag_then_the_space_then_one(capsys, base):
    """--trial-cpus over the space's trial_cpus over 1; a value Ray cannot reserve is refused before
    anything runs."""
    assert reserved_trial_cpus(None, parse_space(GOOD, base)) == 1.0
    with_cpus = parse_space({**GOOD, "trial_cpus": 0.25}, base)
    assert reserved_trial_cpus(None, with_cpus) == 0.25 and reserved_trial_cpus(0.5, with_cpus) == 0.5
    code = tune_main(["--space", str(REPO / "tune_spaces" / "rho-grid.yaml"), "--config", str(QUICK),
                      "--trial-cpus", "0", "--dry-run"])
    assert code == 2 and "--trial-cpus=0.0 is invalid: allowed a number > 0" in capsys.readouterr().err


GOOD = {"name": "s", "search": "grid", "params": {"objective.rho": {"grid": [0.0, 1.0]}}}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"search": "bayes"}, "search='bayes' is invalid: allowed one of grid, random, tpe"),
        ({"scheduler": "pbt"}, "scheduler='pbt' is invalid"),
        ({"num_samples": 0}, "num_samples=0 is invalid"),
        ({"metric": "loss"}, "metric='loss' is invalid"),
        ({"params": {"objective.rho": {"grid": [-1.0, 1.0]}}}, "objective.rho=-1.0 is invalid"),
        ({"params": {"objective.chi": {"grid": [0.5, 1.5]}}}, "objective.chi=1.5 is invalid"),
        ({"params": {"objective.rhoo": {"grid": [1.0]}}}, "objective.rhoo is not a training config field"),
        ({"params": {"run.num_workers": {"grid": [1]}}}, "run.* fields are set per trial"),
        ({"params": {"run.seed": {"grid": [-1]}}}, "run.seed=-1 is invalid"),
        ({"search": "random", "params": {"run.seed": {"choice": [0, 1]}}}, "every point is run once per seed"),
        ({"points": [{"objective.chi": 0.5}], "search": "random", "params": {"objective.rho": {"choice": [0.0]}}},
         "grid when the space lists points"),
        ({"points": [{"objective.rho": 0.5}]}, "fields that are not also params"),
        ({"points": [{"objective.chi": 0.5}, {"objective.chi": 0.5}]}, "distinct points"),
        ({"points": [{"objective.chi": 1.5}]}, "points[0]: objective.chi=1.5 is invalid"),
        ({"test_images": 0}, "test_images=0 is invalid"),
        ({"seed": -3}, "seed=-3 is invalid"),
        ({"trial_cpus": 0}, "trial_cpus=0 is invalid: allowed a number > 0"),
        ({"trial_cpus": "one"}, "trial_cpus='one' is invalid"),
        ({"params": {"objective.rho": {"normal": [0, 1]}}}, "allowed one of grid, choice, uniform, loguniform"),
        ({"search": "random"}, "use {choice: [...]}"),
        ({"search": "tpe", "params": {"objective.beta": {"loguniform": [0.0, 1.0]}}}, "bounds > 0"),
        ({"extra": 1}, "unknown key(s) extra"),
        ({"fixed": {"objective.mode": "adversarial"}}, "objective.mode='adversarial' is invalid"),
    ],
)
def test_bad_spaces_fail_before_anything_runs(patch, message, base):
    with pytest.raises(SpaceError) as e:
        parse_space({**GOOD, **patch}, base)
    assert message in str(e.value)


def test_a_trial_config_applies_the_fixed_fields_then_the_drawn_values(base):
    """Every trial runs with the space's ``fixed`` block (reg-strength: mode at_reg) and its draw."""
    space = load_space(REPO / "tune_spaces" / "reg-strength.yaml", base)
    assert base.objective.mode == "at" and space.fixed == {"objective.mode": "at_reg"}
    cfg = trial_config(space, base, {"objective.beta": 0.002, "objective.rho": 0.0}, "reg-strength", "abc_00001")
    assert (cfg.objective.mode, cfg.objective.beta, cfg.objective.rho) == ("at_reg", 0.002, 0.0)
    assert cfg.run.name == "reg-strength-abc_00001"
    assert cfg.model == base.model and cfg.optim == base.optim  # the rest is the base's
    drawn_over_fixed = parse_space({**GOOD, "fixed": {"objective.rho": 1.0}}, base)
    assert trial_config(drawn_over_fixed, base, {"objective.rho": 0.0}, "s", "t").objective.rho == 0.0


def test_tpe_gets_the_distributions_and_grid_and_random_get_their_trials(base):
    space = parse_space({"name": "s", "search": "tpe", "params": {
        "objective.rho": {"uniform": [0.0, 2.0]}, "objective.beta": {"loguniform": [1e-4, 1e-2]},
        "model.neuron": {"choice": ["lif", "dlif"]}}}, base)
    tuned = param_space(space)
    assert (tuned["objective.rho"].lower, tuned["objective.rho"].upper) == (0.0, 2.0)
    assert (tuned["objective.beta"].lower, tuned["objective.beta"].upper) == (1e-4, 1e-2)
    assert type(tuned["objective.beta"].get_sampler()).__name__ == "_LogUniform"  # ray.tune.search.sample
    assert tuned["model.neuron"].categories == ["lif", "dlif"]
    grid = param_space(parse_space(GOOD, base))
    assert grid == {TRIAL_KEY: {"grid_search": [{"objective.rho": 0.0}, {"objective.rho": 1.0}]}}
    assert trial_values({TRIAL_KEY: {"objective.rho": 0.0}}) == {"objective.rho": 0.0}
    assert trial_values({"objective.rho": 0.3}) == {"objective.rho": 0.3}  # TPE's draws come flat


def test_random_and_tpe_trials_are_drawn_from_the_spaces_seed(base):
    spec = {"name": "s", "search": "random", "num_samples": 5, "params": {
        "objective.rho": {"uniform": [0.0, 2.0]}, "objective.beta": {"loguniform": [1e-4, 1e-2]},
        "model.neuron": {"choice": ["lif", "dlif"]}}}
    draws = expand_trials(parse_space(spec, base))
    assert draws == expand_trials(parse_space(spec, base)) and len(draws) == 5
    assert draws != expand_trials(parse_space({**spec, "seed": 1}, base))
    assert all(0 <= d["objective.rho"] <= 2 and 1e-4 <= d["objective.beta"] <= 1e-2 for d in draws)
    tpe = {**spec, "search": "tpe"}
    assert tpe_samples(parse_space(tpe, base)) == tpe_samples(parse_space(tpe, base))
    assert tpe_samples(parse_space(tpe, base)) != tpe_samples(parse_space({**tpe, "seed": 1}, base))


TPE_SPEC = {"name": "s", "search": "tpe", "scheduler": "none", "metric": "val_robust_acc", "mode": "max",
            "seed": 7, "num_samples": 4, "fixed": {"objective.mode": "at_reg"}, "params": {
                "objective.rho": {"uniform": [0.0, 2.0]}, "objective.beta": {"loguniform": [1e-4, 1e-2]},
                "model.neuron": {"choice": ["lif", "dlif"]}}}
TPE_TRIAL = re.compile(r"  trial (\d): objective\.mode=at_reg objective\.rho=(\S+) objective\.beta=(\S+) "
                       r"model\.neuron=(lif|dlif)")


def tpe_dry_run(base, **patch) -> tuple[str, list[tuple[int, float, float, str]]]:
    """The dry run's head line and its trials parsed as (number, rho, beta, neuron)."""
    head, *lines = dry_run_lines(parse_space({**TPE_SPEC, **patch}, base))
    trials = []
    for line in lines:
        m = TPE_TRIAL.fullmatch(line)
        assert m, line
        trials.append((int(m[1]), float(m[2]), float(m[3]), m[4]))
    return head, trials


def test_a_tpe_dry_run_draws_its_first_trials_from_the_spaces_seed(base):
    """The TPE search's start-up draws, as ``--dry-run`` prints them: the fixed block then one value per
    param inside its bounds; the same seed gives the same draws (and a longer search starts with the
    same ones), another seed others."""
    head, trials = tpe_dry_run(base)
    assert head == ("search s: tpe, scheduler none, Tune metric val_robust_acc (max), seed 7; "
                    "TPE: trials after the first 4 depend on earlier results; 4 trial(s)")
    assert [t[0] for t in trials] == [1, 2, 3, 4]
    assert all(0.0 <= rho <= 2.0 and 1e-4 <= beta <= 1e-2 for _, rho, beta, _ in trials)
    assert len({(rho, beta) for _, rho, beta, _ in trials}) == 4  # four draws, not one repeated
    assert tpe_dry_run(base)[1] == trials
    assert tpe_dry_run(base, num_samples=6)[1][:4] == trials
    other = tpe_dry_run(base, seed=8)[1]
    assert all((a[1], a[2]) != (b[1], b[2]) for a, b in zip(trials, other))


def test_the_dry_run_of_reg_strength_shows_mode_at_reg_in_every_trial(capsys, monkeypatch):
    """``--dry-run`` prints every trial's resolved overrides (the space's fixed block through the one
    override builder) without Ray or MLflow: the tracking URI points nowhere and Ray stays down."""
    import ray

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code = tune_main(["--space", str(REPO / "tune_spaces" / "reg-strength.yaml"), "--config", str(QUICK), "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    trials = [line for line in out if line.strip().startswith("trial ")]
    assert code == 0 and len(trials) == 12 and "12 trial(s)" in out[0]
    assert all("objective.mode=at_reg" in line and "objective.beta=" in line for line in trials)
    assert len({line.split(": ", 1)[1] for line in trials}) == 12
    assert not ray.is_initialized()


def test_score_uses_weighted_objective_and_is_what_tune_optimises(base):
    space = parse_space({**GOOD, "objective": {"val_robust_acc": 1.0, "val_clean_acc": 0.5}}, base)
    assert space.score({"val_robust_acc": 0.2, "val_clean_acc": 0.6}) == pytest.approx(0.5)
    assert space.tune_metric == (SCORE, "max")
    assert with_score(space, {"val_robust_acc": 0.2, "val_clean_acc": 0.6, "epoch": 1})[SCORE] == pytest.approx(0.5)
    assert SCORE not in with_score(space, {"val_robust_acc": 0.2})  # an epoch without both metrics
    plain = parse_space(GOOD, base)
    assert plain.score({"val_robust_acc": 0.3}) == pytest.approx(0.3)
    assert plain.tune_metric == ("val_robust_acc", "max") and with_score(plain, {"val_robust_acc": 0.3}) == {
        "val_robust_acc": 0.3}


TRIAL = [
    "--set", "run.num_workers=1", "--set", "run.cpus_per_worker=0.5", "--set", "optim.epochs=1",
    "--set", "model.timesteps=2", "--set", "data.train_subset=256", "--set", "data.val_size=128",
    "--set", "validation.subset=32", "--set", "validation.batch_size=32", "--set", "run.registered_model=test-tune",
]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_rho_grid_interrupted_and_resumed(rho_grid_search):
    """rho-grid on a tiny preset (the session's ``rho_grid_search``): killed after two finished trials,
    resumed with --resume, completes with exactly one child run per trial under one parent, the trials
    finished before the kill left as they were, and the best trial's checkpoint registered."""
    from mlflow import MlflowClient

    search = rho_grid_search
    client = MlflowClient(search.tracking_uri)
    assert search.first_returncode != 0 and len(search.finished_at_kill) == 2  # killed mid-search
    children = search.children(client)
    trial_ids = [r.data.tags["stable_snn.trial_id"] for r in children]
    assert len(children) == 3 and len(set(trial_ids)) == 3, trial_ids
    assert sorted(float(r.data.params["objective.rho"]) for r in children) == search.grid == [0.0, 1.0, 2.0]
    assert all(r.info.status == "FINISHED" for r in children)
    ends = {r.info.run_id: r.info.end_time for r in children}
    # not run again, and the registration of the best trial kept its end time
    assert all(ends[run_id] == end for run_id, end in search.finished_at_kill.items())
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_robust_acc")] == [1]
    parent_run = client.get_run(search.parent_run_id)
    assert parent_run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(search.parent_run_id)}
    assert {"rho-grid.yaml", "trials.csv", "trials.md", "clean_vs_robust.png", "best_config.yaml"} <= artifacts
    # the registered version is the trial with the best validation robust accuracy
    best = max(children, key=lambda r: (r.data.metrics["val_robust_acc"]))
    mv = client.get_model_version_by_alias(search.registered_model, "candidate")
    assert float(mv.tags["val_robust_acc"]) == pytest.approx(best.data.metrics["val_robust_acc"], abs=1e-4)
    assert parent_run.data.metrics["best_val_robust_acc"] == pytest.approx(best.data.metrics["val_robust_acc"])


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_asha_stops_a_trial_and_a_trial_that_loses_its_worker_resumes(tmp_path, mlflow_server, ray_head, cifar10):
    """A tiny two-trial grid under ASHA with a fixed block and a weighted objective, run one trial at a
    time, whose trials lose their rank-0 worker in the middle of epoch 2 (the fault plan's
    crash_at_epoch). Every child run carries the fixed objective.mode=at_reg. The trial whose network
    never spikes (threshold 1e6, a constant prediction) is stopped at its first rung by the weighted
    score Tune optimises: its child run ends KILLED with a stopped_early tag, the epoch-1 metrics it
    reached and its selected checkpoint, and appears in the trials table. The other trial loses its
    worker in epoch 2, resumes from its own epoch-1 checkpoint, finishes with each epoch logged once
    and is registered with its selection."""
    from mlflow import MlflowClient

    from jobs.training.checkpoints import load_checkpoint
    from jobs.training.faults import FAULT_PLAN_ENV

    storage = tmp_path / "storage"
    env = job_env(mlflow_server.address, storage, cifar10.root, ray_address=ray_head.gcs_address)
    env[FAULT_PLAN_ENV] = json.dumps({"crash_at_epoch": 2})
    space = {"name": "asha", "search": "grid", "scheduler": "asha", "max_concurrent_trials": 1,
             "objective": {"val_clean_acc": 1.0, "val_robust_acc": 0.25}, "fixed": {"objective.mode": "at_reg"},
             "points": [{"model.threshold": 0.5}, {"model.threshold": 1.0e6}], "params": {"run.seed": {"grid": [0]}}}
    (tmp_path / "asha.yaml").write_text(yaml.safe_dump(space))
    args = ["--space", str(tmp_path / "asha.yaml"), "--config", str(QUICK), "--name", "asha-test", *TRIAL,
            "--set", "optim.epochs=2", "--set", "run.registered_model=test-asha", "--trial-cpus", "0.25",
            # 16 steps an epoch and 64 validation images: the spiking trial's first epoch scores clearly
            # above the constant prediction's (about one image in ten, robust or not)
            "--set", "optim.batch_size=16", "--set", "validation.subset=64", "--set", "validation.batch_size=64",
            "--set", "run.max_failures=1", *cifar10.overrides()[2:]]
    out = subprocess.run([sys.executable, "-m", "jobs.tune", *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    log = out.stdout + out.stderr
    (tmp_path / "tune.log").write_text(log)
    assert out.returncode == 0, log[-6000:]
    assert log.count("fault plan crash_at_epoch=2: killing this worker") == 1  # the trial that reached epoch 2
    assert "Trial status:" in log  # the driver prints Tune's progress table
    client = MlflowClient(mlflow_server.address)
    exp = client.get_experiment_by_name("stable-snn")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`stable_snn.run_name` = 'asha-test'")[0]
    assert parent.data.params["tune.metric"] == "objective_score"
    children = {float(r.data.params["model.threshold"]): r for r in child_runs(client, "stable-snn", parent.info.run_id)}
    assert set(children) == {0.5, 1.0e6}
    assert all(r.data.params["objective.mode"] == "at_reg" for r in children.values())  # the fixed block
    stopped, finished = children[1.0e6], children[0.5]
    steps = {k: [m.step for m in client.get_metric_history(r.info.run_id, "val_robust_acc")]
             for k, r in children.items()}
    assert stopped.info.status == "KILLED" and stopped.data.tags.get("stopped_early") == "true", steps
    assert steps == {0.5: [1, 2], 1.0e6: [1]} and stopped.data.tags["selected_epoch"] == "1"
    assert finished.info.status == "FINISHED" and "stopped_early" not in finished.data.tags
    # the worker lost in epoch 2: resumed from the trial's own epoch-1 checkpoint, each epoch logged once
    state, _ = load_checkpoint(storage / finished.data.tags["stable_snn.run_name"] / "checkpoint_epoch_0002")
    assert state["resumes"] == [1] and [h["epoch"] for h in state["history"]] == [1, 2]
    for key in ("train_loss", "val_clean_acc"):
        assert sorted(m.step for m in client.get_metric_history(finished.info.run_id, key)) == [1, 2], key
    table = (tmp_path / "trials.csv")
    client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))
    assert "True" in table.read_text() and stopped.data.tags["stable_snn.trial_id"] in table.read_text()
    assert {"report.md", "report.csv", "report.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    mv = client.get_model_version_by_alias("test-asha", "candidate")
    assert mv.run_id == finished.info.run_id and mv.tags["selection.epoch"] in ("1", "2")
    assert "standard errors" in mv.tags["selection.rule"] and float(mv.tags["selection.margin"]) >= 0
    assert "1 stopped early" in out.stdout
