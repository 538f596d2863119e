"""Bad input is refused before any compute, through the real entry points, with a message naming the
field, the value and what is allowed; and the safe defaults (loopback binding, no credentials in the
repository, no unpickling of code from checkpoints or the registry)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from jobs.checksums import CHECKSUM_FILE, write_checksums
from jobs.config import load_job_config
from jobs.errors import CheckpointError
from jobs.evaluate.__main__ import main as evaluate_main
from jobs.train.__main__ import main as train_main
from jobs.training.checkpoints import STATE_FILE, load_checkpoint, save_checkpoint
from jobs.tune.__main__ import main as tune_main
from tests.jobs.helpers import QUICK, REPO
from tests.jobs.ray_layout import SNAPSHOT, write_snapshot


@pytest.fixture
def sandbox(tmp_path, monkeypatch, cifar10):
    """A job environment whose every location is under tmp_path: a sqlite tracking store (created on
    first use, so its absence proves nothing was tracked) and a storage folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("STABLE_SNN_STORAGE_PATH", str(tmp_path / "storage"))
    monkeypatch.setenv("STABLE_SNN_DATA_ROOT", str(cifar10.root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _nothing_started(root: Path) -> None:
    assert not (root / "mlflow.db").exists(), "an MLflow store was created"
    assert not (root / "storage").exists(), "a run folder was created"


# -- training configuration: jobs.train --------------------------------------------------------

BAD_SETTINGS = [
    # (overrides, fragments the message must hold: field=value and what is allowed)
    (["objective.rho=-1"], ["objective.rho=-1.0", "allowed a number >= 0"]),
    (["objective.beta=-0.001"], ["objective.beta=-0.001", "allowed a number >= 0"]),
    (["objective.chi=1.5"], ["objective.chi=1.5", "allowed a number in [0.0, 1.0]"]),
    (["objective.chi=-0.1"], ["objective.chi=-0.1", "allowed a number in [0.0, 1.0]"]),
    (["validation.eps=0"], ["validation.eps=0.0", "allowed a number in (0.0, 1.0]"]),
    (["validation.eps=1.5"], ["validation.eps=1.5", "allowed a number in (0.0, 1.0]"]),
    (["model.timesteps=0"], ["model.timesteps=0", "allowed an integer >= 1"]),
    (["model.arch=resnet50"], ["model.arch='resnet50'", "allowed one of vgg11, vgg5, wrn16"]),
    (["model.neuron=izhikevich"], ["model.neuron='izhikevich'", "allowed one of lif, dlif"]),
    (["data.dataset=mnist"], ["data.dataset='mnist'", "allowed one of cifar10, cifar100"]),
    (["objective.mode=trades"], ["objective.mode='trades'", "allowed one of natural, gaussian, at, at_reg"]),
    (["run.num_workers=4", "data.train_subset=100"], ["data.train_subset=100", "every worker needs a full batch"]),
    (["objective.mppd_leak=paper"], ["objective.mppd_leak='paper'", "allowed one of lambda, dlif"]),
    (["run.validation_cpus=-1"], ["run.validation_cpus=-1.0", "allowed a number >= 0.0"]),
    # fault injection is a test-only plan (jobs.training.faults), never a config field
    (["run.nan_at_epoch=2"], ["unknown key(s) run.nan_at_epoch", "allowed: run.name"]),
    (["run.fail_at_epoch=2"], ["unknown key(s) run.fail_at_epoch"]),
]


@pytest.mark.parametrize("overrides, fragments", BAD_SETTINGS, ids=[o[0] for o, _ in BAD_SETTINGS])
def test_train_refuses_bad_settings(overrides, fragments, sandbox, capsys):
    args = ["--config", str(QUICK)] + [x for o in overrides for x in ("--set", o)]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    _nothing_started(sandbox)


def test_yaml_with_unknown_keys_is_refused(sandbox, capsys):
    preset = yaml.safe_load(QUICK.read_text())
    preset["objective"]["rhoo"] = 1.0
    preset["trainer"] = {"epochs": 3}
    path = sandbox / "typo.yaml"
    path.write_text(yaml.safe_dump(preset))
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) trainer" in err and "allowed: model, data, objective, optim, validation, run" in err
    preset.pop("trainer")
    path.write_text(yaml.safe_dump(preset))
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) objective.rhoo" in err and "objective.rho," in err
    _nothing_started(sandbox)


def test_bad_setting_through_the_real_entry_point_takes_seconds(sandbox):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(QUICK), "--set", "objective.rho=-0.5"],
                         cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    print(f"refused after {wall:.1f} s")
    assert out.returncode == 2
    assert "objective.rho=-0.5 is invalid: allowed a number >= 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert wall < 30
    _nothing_started(sandbox)


@pytest.mark.parametrize("layout", ["missing", "unknown"])
def test_dataset_folder_missing_or_unknown_says_how_to_get_cifar10(layout, sandbox, capsys):
    root = sandbox / "cifar"
    if layout == "unknown":
        root.mkdir()
        (root / "images.zip").write_bytes(b"not a dataset")
    assert train_main(["--config", str(QUICK), "--set", f"data.root={root}", "--set", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert str(root) in err
    assert ("does not exist" if layout == "missing" else "holds no known layout") in err
    assert "To get CIFAR-10" in err and "data.download=true" in err
    _nothing_started(sandbox)


# -- search and evaluation entry points ---------------------------------------------------------


def test_tune_refuses_unknown_search_algorithm(sandbox, capsys):
    space = sandbox / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "s", "search": "bayes", "params": {"objective.rho": {"grid": [0.0, 1.0]}}}))
    assert tune_main(["--space", str(space), "--config", str(QUICK)]) == 2
    assert "search='bayes' is invalid: allowed one of grid, random, tpe" in capsys.readouterr().err
    _nothing_started(sandbox)


def test_evaluate_refuses_unknown_protocol(sandbox, capsys):
    assert evaluate_main(["--model-uri", "models:/m@candidate", "--protocol", "table-9"]) == 2
    assert "unknown protocol 'table-9'; allowed: paper-table1, quick, eps-curve" in capsys.readouterr().err
    _nothing_started(sandbox)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_model_uri_not_in_registry_is_refused(mlflow_server, monkeypatch, capsys):
    from mlflow import MlflowClient

    from jobs.errors import ModelNotFoundError
    from jobs.tracking.models import load_registered_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.address)
    client = MlflowClient(mlflow_server.address)
    experiment = "refused-model-uri"  # of this test alone: other tests log into the shared server meanwhile
    for uri in ("models:/no-such-model@candidate", "models:/no-such-model/3"):
        assert evaluate_main(["--model-uri", uri, "--protocol", "quick", "--experiment", experiment]) == 2
        err = capsys.readouterr().err
        assert f"model URI {uri!r} does not exist in the registry at {mlflow_server.address}" in err
        with pytest.raises(ModelNotFoundError, match="does not exist in the registry"):
            load_registered_model(uri, client)
    exp = client.get_experiment_by_name(experiment)
    assert exp is None or client.search_runs([exp.experiment_id]) == []  # no run created


# -- checkpoints ---------------------------------------------------------------------------------


def _checkpoint(folder: Path) -> Path:
    cfg = load_job_config(QUICK, ["model.timesteps=2"])
    state = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 1, "history": [{"epoch": 1, "train_loss": 2.3}]}
    return save_checkpoint(folder, state, cfg)


@pytest.mark.parametrize("damage", ["truncated", "tampered", "checksums removed", "config edited"])
def test_damaged_checkpoint_is_refused_naming_the_file(damage, tmp_path):
    folder = _checkpoint(tmp_path / "checkpoint_epoch_0001")
    state = folder / STATE_FILE
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "tampered":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0x01
        state.write_bytes(bytes(data))
    elif damage == "checksums removed":
        (folder / CHECKSUM_FILE).unlink()
    else:
        (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("rho: 1.0", "rho: 2.0"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    assert str(folder) in str(e.value)
    if damage in ("truncated", "tampered"):
        assert f"file {STATE_FILE} does not match its recorded SHA-256" in str(e.value)
    elif damage == "config edited":
        assert "file config.yaml does not match" in str(e.value)


def test_intact_checkpoint_loads_weights_only(tmp_path):
    folder = _checkpoint(tmp_path / "ck")
    state, cfg = load_checkpoint(folder)
    assert torch.equal(state["model"]["w"], torch.arange(1000, dtype=torch.float32)) and cfg.model.timesteps == 2


def test_checkpoint_holding_code_is_refused(tmp_path):
    """A state file that needs unpickling beyond tensors (here: a class instance), with matching checksums."""
    folder = _checkpoint(tmp_path / "ck")
    torch.save({"model": {}, "payload": Path("/")}, folder / STATE_FILE)
    write_checksums(folder)
    with pytest.raises(CheckpointError, match="cannot be loaded with weights_only=True"):
        load_checkpoint(folder)


def test_relaunch_onto_tampered_latest_checkpoint_is_refused(sandbox, capsys):
    """The checkpoint Ray Train would resume from (the latest in its snapshot) is tampered with: a relaunch
    fails with the checksum message before Ray starts, instead of training from scratch."""
    name = "tampered-run"
    run_dir = sandbox / "storage" / name
    folder = _checkpoint(run_dir / "checkpoint_epoch_0001")
    write_snapshot(run_dir, [folder.name])
    data = bytearray((folder / STATE_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / STATE_FILE).write_bytes(bytes(data))
    assert train_main(["--config", str(QUICK), "--set", f"run.name={name}"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {folder}: file {STATE_FILE} does not match its recorded SHA-256 (truncated or tampered)" in err
    assert not (sandbox / "mlflow.db").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([SNAPSHOT, folder.name])  # nothing written


# -- safe defaults -------------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)
            if v6:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                found.add(":".join(b.hex() for b in words))
            else:
                found.add(".".join(str(b) for b in raw[::-1]))
    return found


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_servers_started_by_the_project_listen_on_loopback_only(mlflow_server, ray_head):
    """The MLflow server and the Ray dashboard / job API (the parts that run code or hold data) that
    infra.local.stack starts bind 127.0.0.1 unless told otherwise."""
    for service in (mlflow_server, ray_head):
        port = int(service.address.rsplit(":", 1)[1])
        assert _listening(port) == {"127.0.0.1"}, (service.name, _listening(port))


CREDENTIALS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\b(password|passwd|secret|token|api_key)\s*[:=]\s*['\"][^'\"$<{]{8,}['\"]"),
    re.compile(r"[a-z]+://[^:@\s/'\"]+:[^@\s/'\"$<{]{3,}@"),  # user:password@ in a URI
]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
        names = out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]
    return [REPO / n for n in names if not n.startswith("infra/")]  # infra/ is checked by tests/infra


def test_no_credentials_in_tracked_files():
    hits = []
    for path in _tracked_files():
        if not path.is_file() or path.suffix in (".png", ".pt", ".parquet", ".db") or path.stat().st_size > 2_000_000:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(rx.search(line) for rx in CREDENTIALS):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert hits == []


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_torch_load_is_always_weights_only_and_nothing_is_unpickled():
    """Checkpoints and registered models are loaded without unpickling code: every torch.load passes
    weights_only=True, and no pickle, cloudpickle or mlflow.pytorch loader is used."""
    files = sorted([*(REPO / "jobs").rglob("*.py"), *(REPO / "stable_snn").rglob("*.py")])
    loads, bad = 0, []
    for path in files:
        for call, func in _calls(path):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if func == "torch.load":
                loads += 1
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{where}: torch.load without weights_only=True")
            elif func in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "mlflow.pytorch.load_model",
                          "torch.jit.load"):
                bad.append(f"{where}: {func}")
    assert loads >= 2  # checkpoints and registered weights
    assert bad == []
