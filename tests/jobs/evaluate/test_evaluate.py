"""The evaluation job: reports and the champion rule (fast), and the job end to end against a real
MLflow tracking server and Ray head (slow)."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import ExitCode
from jobs.config import JobConfig, job_config_from_dict
from jobs.evaluate.__main__ import main as evaluate_main
from jobs.evaluate.report import (
    data_key, decide_promotion, eps_curve_points, metrics_of, plot_eps_curve, version_tags, write_results_parquet,
)
from stable_snn.attacks import PGD, Protocol, Row, evaluate_protocol
from stable_snn.config import build_network
from tests.jobs.helpers import job_env, run_job

TINY_MODEL = {"arch": "vgg5", "timesteps": 2, "width": 0.25, "classifier_width": 64}


def tiny_config(data_root: Path | None = None) -> JobConfig:
    # a small validation split (256 held out of 512 training images) so --split validation decodes little
    data = {"dataset": "cifar10", "val_size": 256, "train_subset": 256} | ({"root": str(data_root)} if data_root else {})
    return job_config_from_dict({"model": TINY_MODEL, "data": data, "run": {"experiment": "stable-snn-eval-test"}})


def constant_model(cls: int, seed: int = 0):
    """A real network of the tiny config whose head ignores its input: it always predicts ``cls``.

    Its accuracy under any attack is the frequency of ``cls`` among the labels, so the job's
    numbers, tags and champion decisions are known in advance.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(tiny_config())
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[cls] = 5.0
    return model.eval()


def small_result(n: int = 6):
    model = constant_model(3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.tensor([3, 1, 3, 0, 3, 2][:n])
    rows = [Row(f"pgd-10_eps{k}", partial(PGD, eps=k / 255, alpha=k / 4 / 255, steps=10), eps=k / 255) for k in (2, 4)]
    protocol = Protocol("mini", (Row("clean"), *rows))
    return evaluate_protocol(model, x, y, protocol, batch_size=4, generator_seed=0)


# -- fast: reports, tags, the champion rule, argument checks ------------------------------------

def test_parquet_one_row_per_sample_and_attack(tmp_path):
    result = small_result()
    path = write_results_parquet(result, tmp_path / "r.parquet", sample_ids=np.arange(10, 16))
    table = pq.read_table(path).to_pylist()
    assert len(table) == 6 * 4  # three rows and the worst case
    assert set(table[0]) == {"sample", "label", "attack", "correct", "predicted"}
    assert pq.read_schema(path).field("correct").type == pa.bool_()
    assert {r["sample"] for r in table} == set(range(10, 16))
    assert all(r["correct"] == (r["label"] == 3) and r["predicted"] == 3 for r in table)


def test_metrics_tags_and_eps_curve(tmp_path):
    result = small_result()
    metrics = metrics_of(result)
    assert metrics["accuracy/clean"] == pytest.approx(0.5) and metrics["accuracy/worst-case"] == pytest.approx(0.5)
    assert "seconds/pgd-10_eps2" in metrics
    tags = version_tags(result, data=data_key("cifar10", "test", 6), run_id="abc")
    assert tags["eval.mini.worst-case"] == "0.5000" and tags["eval.mini.pgd-10_eps4"] == "0.5000"
    assert tags["eval.mini.data"] == "cifar10:test:balanced-6:seed0" and tags["eval.mini.run_id"] == "abc"
    validation = version_tags(result, data=data_key("cifar10", "validation", 6), run_id="abc", split="validation")
    assert validation["eval.validation.mini.worst-case"] == "0.5000"
    assert validation["eval.validation.mini.data"] == "cifar10:validation:balanced-6:seed0"
    assert not any(k.startswith("eval.mini.") for k in validation)
    assert [round(e * 255) for e, _ in eps_curve_points(result)] == [0, 2, 4]
    png = plot_eps_curve(result, tmp_path / "curve.png", "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


VAL = {"eval.validation.quick.worst-case": "0.3", "eval.validation.quick.data": "d"}


@pytest.mark.parametrize("champion, tags, score, promote", [
    (None, None, 0.1, True),
    ("1", VAL, 0.4, True),
    ("1", VAL, 0.3, False),  # a tie does not beat
    ("1", VAL, 0.2, False),
    ("1", VAL | {"eval.validation.quick.data": "other"}, 0.9, False),  # other data
    ("1", {"eval.validation.paper-table1.worst-case": "0.1", "eval.validation.paper-table1.data": "d"}, 0.9, False),
    ("1", {"eval.quick.worst-case": "0.1", "eval.quick.data": "d"}, 0.9, False),  # only a test-split result
    ("2", VAL, 0.9, False),  # already the champion
])
def test_promotion_rule(champion, tags, score, promote):
    d = decide_promotion(protocol="quick", data="d", candidate_version="2", candidate_score=score,
                         champion_version=champion, champion_tags=tags)
    assert d.promote is promote and d.reason


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "table-1"], "unknown protocol 'table-1'; allowed: paper-table1, quick, eps-curve"),
    (["--protocol", "quick", "--limit", "0"], "--limit=0 is invalid"),
    (["--protocol", "quick", "--workers", "-1"], "--workers=-1 is invalid"),
    (["--protocol", "quick", "--batch-size", "0"], "--batch-size=0 is invalid"),
    (["--protocol", "eps-curve", "--promote", "champion"], "needs a protocol with a worst case"),
    (["--protocol", "quick", "--split", "train"], "--split='train' is invalid: allowed one of test, validation"),
    (["--protocol", "quick", "--promote", "champion"], "--promote champion is refused on the test split"),
    (["--protocol", "strict", "--split", "test", "--promote", "champion"], "Promote on the model's validation split"),
])
def test_bad_arguments_fail_before_any_service(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # would fail differently if contacted
    assert evaluate_main(["--model-uri", "models:/m@a", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_model_uri_shape(capsys):
    assert evaluate_main(["--model-uri", "runs:/abc/model", "--protocol", "quick"]) == 2
    assert "models:/<name>@<alias>" in capsys.readouterr().err


def test_unreachable_tracking_server_exits_3_like_every_job(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert evaluate_main(["--model-uri", "models:/m@a", "--protocol", "quick"]) == ExitCode.TRACKING_UNREACHABLE == 3
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")


# -- slow: the job against a real MLflow server and Ray head ------------------------------------

LIMIT = 16


def _register(client, cfg, model, name, alias):
    from jobs.tracking.models import log_and_register

    exp = client.get_experiment_by_name(cfg.run.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.run.experiment)
    run = client.create_run(exp_id, run_name=f"train-{alias}")
    try:
        version = log_and_register(client, run.info.run_id, model, cfg, name=name, tags={"test": alias}, alias=alias,
                                   example=torch.rand(1, 3, 32, 32))
    finally:
        client.set_terminated(run.info.run_id)
    return version, run.info.run_id


def _evaluate(env, *args):
    out = run_job("jobs.evaluate", list(args), env, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _eval_run(client, version, protocol):
    exp = client.get_experiment_by_name("stable-snn-eval-test")
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.model_version = '{version}' and tags.protocol = '{protocol}' and tags.`stable_snn.job` = 'evaluate'"))
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_job_end_to_end(tmp_path, mlflow_server, ray_head, cifar10, monkeypatch, capsys, caplog):
    """Three constant versions (known accuracies): promotion on their own runs' validation splits, the eps curve
    on the test split, a URI not in the registry."""
    from mlflow import MlflowClient

    from jobs.training.validation import load_splits
    from stable_snn.data.splits import subset_indices

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.address)
    client = MlflowClient(mlflow_server.address)
    cfg = tiny_config(cifar10.root)
    labels = load_splits(cfg).val.labels  # the split the training run of cfg held out
    subset = subset_indices(labels, LIMIT, np.random.default_rng(0))  # what --limit evaluates (--data-seed 0)
    counts = np.bincount(labels[subset], minlength=10)
    high = int(np.argmax(counts))
    low, worse = [c for c in range(10) if 0 < counts[c] < counts[high]][:2]  # a balanced subset of 16: 1 or 2 each
    name = "eval-test-vgg5"
    v1, run1 = _register(client, cfg, constant_model(low), name, "first")
    v2, _ = _register(client, cfg, constant_model(high), name, "second")
    v3, _ = _register(client, cfg, constant_model(worse, seed=1), name, "third")

    env = job_env(mlflow_server.address, tmp_path / "storage", cifar10.root)
    common = ["--protocol", "quick", "--split", "validation", "--limit", str(LIMIT), "--batch-size", "8",
              "--dataset-root", str(cifar10.root), "--promote", "champion"]

    # 1. no champion yet: version 1 becomes the champion (the job's process, whose output a user reads)
    out = _evaluate(env, "--model-uri", f"models:/{name}@first", *common)
    assert "| worst-case |" in out.stdout and "running accuracy" in out.stdout and "ETA" in out.stdout
    run = _eval_run(client, v1.version, "quick")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["model_name"], tags["model_version"], tags["source_run_id"]) == (name, str(v1.version), run1)
    assert (tags["dataset"], tags["limit"], tags["split"]) == ("cifar10", str(LIMIT), "validation")
    assert tags["data"] == f"cifar10:validation:balanced-{LIMIT}:seed0" and run.data.params["split"] == "validation"
    expected = counts[low] / LIMIT
    for row in ("clean", "fgsm", "pgd-10", "worst-case"):
        assert run.data.metrics[f"accuracy/{row}"] == pytest.approx(expected), row
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.parquet", "results.md"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "results.parquet", str(tmp_path)))
    table = pq.read_table(local).to_pylist()
    assert len(table) == LIMIT * 4
    val_indices = np.asarray(load_splits(cfg).val.indices)  # sample ids: positions in the training split
    assert sorted({r["sample"] for r in table}) == sorted(val_indices[subset].tolist())
    assert all(r["predicted"] == low for r in table)
    mv = client.get_model_version(name, v1.version)
    assert mv.tags["eval.validation.quick.worst-case"] == f"{expected:.4f}"
    assert mv.tags["eval.validation.quick.run_id"] == run.info.run_id and "eval.quick.worst-case" not in mv.tags
    assert client.get_model_version_by_alias(name, "champion").version == v1.version

    # 2. a better version, evaluated on two Ray actors: the champion moves
    ray_env = env | {"RAY_ADDRESS": ray_head.gcs_address}
    _evaluate(ray_env, "--model-uri", f"models:/{name}@second", "--workers", "2", *common)
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    run2 = _eval_run(client, v2.version, "quick")
    assert run2.data.metrics["accuracy/worst-case"] == pytest.approx(counts[high] / LIMIT)
    assert run2.data.params["workers"] == "2"

    # 3. a worse version: the champion stays (3 to 5 in-process: the job's imports are paid already)
    with caplog.at_level(logging.INFO, logger="stable_snn.evaluate"):
        assert evaluate_main(["--model-uri", f"models:/{name}@third", *common]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    assert "not moved" in caplog.text
    assert client.get_model_version(name, v3.version).tags["eval.validation.quick.worst-case"] == \
        f"{counts[worse] / LIMIT:.4f}"

    # 4. the eps curve on the test split: its plot is logged, the test-split tags written
    assert evaluate_main(["--model-uri", f"models:/{name}/{v1.version}", "--protocol", "eps-curve", "--limit", "8",
                          "--dataset-root", str(cifar10.root)]) == 0
    run4 = _eval_run(client, v1.version, "eps-curve")
    assert "eps_curve.png" in {a.path for a in client.list_artifacts(run4.info.run_id)}
    assert run4.data.tags["split"] == "test"
    assert client.get_model_version(name, v1.version).tags["eval.eps-curve.pgd-10_eps16"]

    # 5. a model URI that is not in the registry fails with a clear message
    capsys.readouterr()
    assert evaluate_main(["--model-uri", f"models:/{name}@nope", "--protocol", "quick"]) == 2
    assert "does not exist in the registry" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_evaluation_of_the_quick_run(quick_run, tmp_path, cifar10):
    """The quick preset's trained model under paper-table1 on 16 test images: the run is opened before the attacks
    (its duration covers them), carries the training run's parameters, a link to it and the split; the attacks
    really ran (their time); promotion on the test split is refused."""
    from mlflow import MlflowClient

    client = MlflowClient(quick_run.tracking_uri)
    source = client.get_model_version_by_alias(quick_run.registered_model, "candidate")
    env = job_env(quick_run.tracking_uri, tmp_path / "storage", cifar10.root)
    args = ["--model-uri", quick_run.model_uri, "--protocol", "paper-table1", "--limit", "16", "--batch-size", "8",
            "--dataset-root", str(cifar10.root)]

    refused = run_job("jobs.evaluate", [*args, "--promote", "champion"], env, timeout=120)
    assert refused.returncode == 2 and "refused on the test split" in refused.stderr

    out = _evaluate(env, *args)
    assert "ETA" in out.stdout and "sanity flags raised" in out.stdout
    training = client.get_run(source.run_id)
    runs = client.search_runs([training.info.experiment_id], filter_string=(
        f"tags.source_run_id = '{source.run_id}' and tags.`stable_snn.job` = 'evaluate'"))
    assert len(runs) == 1  # the refused evaluation created no run
    run = runs[0]
    assert run.info.status == "FINISHED"
    attack_seconds = sum(v for k, v in run.data.metrics.items() if k.startswith("seconds/"))
    assert (run.info.end_time - run.info.start_time) / 1000 > attack_seconds > 0  # opened before the attacks
    for key in ("objective.rho", "objective.chi", "objective.mode", "model.arch", "model.width", "run.seed"):
        assert run.data.params[key] == training.data.params[key], key
    assert (run.data.params["split"], run.data.tags["split"]) == ("test", "test")
    assert run.data.tags["source_run"] == f"#/experiments/{training.info.experiment_id}/runs/{source.run_id}"
    assert run.data.tags["source_run_url"].startswith(quick_run.tracking_uri)
    assert run.data.tags["flags_raised"] and run.data.tags["flag.zero-gradients"] in ("raised", "ok")
    history = client.get_metric_history(run.info.run_id, "progress/batches_done")
    assert [m.value for m in history] == [1.0, 2.0]

    # The attacks really ran: they changed predictions the clean pass made (the model's predictions
    # depend on the image), and each cost what its passes cost (PGD-40 is 40 forward-backward passes).
    seconds = {k.removeprefix("seconds/"): v for k, v in run.data.metrics.items() if k.startswith("seconds/")}
    assert seconds["pgd-40"] > 10 * seconds["clean"] and seconds["pgd-20"] > 5 * seconds["clean"], seconds
    rows = pq.read_table(Path(client.download_artifacts(run.info.run_id, "results.parquet", str(tmp_path)))).to_pylist()
    assert {r["attack"] for r in rows} == {"clean", "fgsm", "pgd-7", "pgd-10", "pgd-20", "pgd-40",
                                            "apgd-ce", "apgd-dlr", "worst-case"}
    clean = {r["sample"]: r["predicted"] for r in rows if r["attack"] == "clean"}
    assert len(set(clean.values())) > 1, "the quick run's model predicts one class for every image"
    changed = {r["attack"] for r in rows if r["attack"] not in ("clean", "worst-case") and r["predicted"] != clean[r["sample"]]}
    assert changed, "no attack changed any prediction"
    tags = client.get_model_version(source.name, source.version).tags
    assert tags["eval.paper-table1.run_id"] == run.info.run_id and tags["eval.paper-table1.flags"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ray_actors_give_the_in_process_result(ray_head, monkeypatch):
    """Batches spread over two actors (in any order) merge into the in-process result."""
    import ray

    from jobs.evaluate.workers import evaluate_distributed
    from stable_snn.attacks import FGSM

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from stable_snn.models import build_model

        model = build_model("vgg5", **{k: v for k, v in TINY_MODEL.items() if k != "arch"}).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    eps = 8 / 255
    protocol = Protocol("mini", (Row("clean"), Row("fgsm", lambda: FGSM(eps=eps), eps=eps),
                                 Row("pgd-3", lambda: PGD(eps=eps, alpha=2 / 255, steps=3), eps=eps)))
    local = evaluate_protocol(model, x, y, protocol, batch_size=4, generator_seed=5)
    events = []
    ray.init(address=ray_head.gcs_address)
    try:
        remote = evaluate_distributed(model, x, y, protocol, batch_size=4, generator_seed=5, workers=2,
                                      progress=events.append)
    finally:
        ray.shutdown()
    for name in local.rows:
        assert torch.equal(local.rows[name].correct, remote.rows[name].correct), name
        assert torch.equal(local.rows[name].predicted, remote.rows[name].predicted), name
    assert len(events) == 3 * 3
