"""Logging a trained network as an MLflow model, registering it, and loading it back.

The logged model is a models-from-code pyfunc (``jobs/tracking/pyfunc_model.py``) whose artifacts
are the weights (``weights.pt``, a plain state dict), the resolved config
(``config.yaml``) and their checksums.  It carries the code that rebuilds the network (the
``stable_snn`` and ``jobs`` packages, as MLflow ``code_paths``) and the project's pins of what
that code imports as its requirements, so ``mlflow.pyfunc.load_model`` serves it in any
environment built from them.  ``load_registered_model("models:/name@alias")``
downloads those artifacts, verifies the checksums and rebuilds the network through
the library, so no code is ever unpickled from the registry.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import stable_snn
from stable_snn.config import build_network, dump_config
from stable_snn.models import SpikingNetwork

from ..checksums import verify_checksums, write_checksums
from ..config import JobConfig, read_stored_config
from ..dependencies import model_requirements
from ..errors import ModelNotFoundError

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
WEIGHTS = "weights.pt"
CONFIG = "config.yaml"
# The packages the pyfunc imports on load, logged with it (MLflow puts them first on sys.path).
CODE_PATHS = [str(Path(stable_snn.__file__).parent), str(Path(__file__).resolve().parents[1])]


def build_from_artifacts(weights_path: str | Path, config_path: str | Path) -> tuple[SpikingNetwork, JobConfig]:
    """Rebuild the network from logged artifacts (checksums verified, weights-only load), in eval mode."""
    weights_path, config_path = Path(weights_path), Path(config_path)
    verify_checksums(weights_path.parent, "model artifacts")
    cfg = read_stored_config(config_path)
    model = build_network(cfg)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model.eval()
    return model, cfg


def write_model_artifacts(folder: Path, model: SpikingNetwork, cfg: JobConfig) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / WEIGHTS)
    (folder / CONFIG).write_text(dump_config(cfg))
    checksums = write_checksums(folder)
    return {"weights": str(folder / WEIGHTS), "config": str(folder / CONFIG), "checksums": str(checksums)}


def log_and_register(
    client,
    run_id: str,
    model: SpikingNetwork,
    cfg: JobConfig,
    *,
    name: str,
    tags: dict[str, str],
    alias: str = "candidate",
    example: torch.Tensor | None = None,
):
    """Log ``model`` as a pyfunc in ``run_id``, register it under ``name``, tag it and set ``alias``.

    Returns the new ``ModelVersion``.
    """
    code = Path(__file__).with_name("pyfunc_model.py")
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_model_artifacts(Path(tmp), model, cfg)
        x = example if example is not None else torch.rand(2, 3, 32, 32)
        x_np = x.detach().cpu().float().numpy()
        with torch.no_grad():
            was = model.training
            model.eval()
            probs = torch.softmax(model(x.float()).mean(0), 1).numpy()
            model.train(was)
        before = client.get_run(run_id).info
        try:
            with mlflow.start_run(run_id=run_id, nested=False):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=str(code),
                    artifacts=artifacts,
                    input_example=x_np,
                    signature=infer_signature(x_np, probs),
                    pip_requirements=model_requirements(),
                    code_paths=CODE_PATHS,
                )
        finally:
            keep_run_state(client, run_id, before)
    version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s (alias %s) from run %s", name, version.version, alias, run_id)
    return version


def keep_run_state(client, run_id: str, before) -> None:
    """Put back the status and end time the run had before ``mlflow.start_run`` reopened it and its end
    ended it FINISHED now: a FAILED run stays FAILED, and an ended run keeps its end time (else the UI
    shows the wait until registration as the run's duration)."""
    if before.status == "RUNNING":
        client.update_run(run_id, status="RUNNING")  # its job closes it
    else:
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)


@dataclass
class LoadedModel:
    model: SpikingNetwork
    config: JobConfig
    name: str
    version: str
    run_id: str


def resolve_model_version(client, model_uri: str):
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> ModelVersion (clear error if absent)."""
    if not model_uri.startswith("models:/"):
        raise ModelNotFoundError(f"model URI {model_uri!r} must look like models:/<name>@<alias> or models:/<name>/<version>")
    ref = model_uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        if not version:
            raise ModelNotFoundError(f"model URI {model_uri!r} names no version or alias")
        return client.get_model_version(name, version)
    except MlflowException as e:
        raise ModelNotFoundError(f"model URI {model_uri!r} does not exist in the registry at {client.tracking_uri}: {e.message}") from None


def load_registered_model(model_uri: str, client=None) -> LoadedModel:
    """Download a registered model's artifacts and rebuild it through the library (eval mode)."""
    client = client or MlflowClient()
    mv = resolve_model_version(client, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        location = client.get_model_version_download_uri(mv.name, mv.version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri))
        artifacts = local / "artifacts"
        model, cfg = build_from_artifacts(artifacts / WEIGHTS, artifacts / CONFIG)
    return LoadedModel(model, cfg, mv.name, str(mv.version), mv.run_id)


def register_model(client, run_id: str, model: SpikingNetwork, cfg: JobConfig, epoch: int, summary: dict, alias: str):
    """Register the model of ``epoch`` of the run under ``cfg.registered_model_name`` (idempotent: a
    version already registered from this run and epoch is reused, and only the alias is set)."""
    name = cfg.registered_model_name
    try:
        existing = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                    if v.tags.get("epoch") == str(epoch)]
    except MlflowException:  # no such registered model yet
        existing = []
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        client.set_registered_model_alias(name, alias, version.version)
        log.info("%s version %s already holds epoch %d of run %s: alias %s set, nothing registered again",
                 name, version.version, epoch, run_id, alias)
        return version
    return log_and_register(
        client, run_id, model, cfg, name=name, alias=alias,
        tags={"run_name": cfg.run.name, "epoch": epoch, "arch": cfg.model.arch, "mode": cfg.objective.mode,
              "rho": cfg.objective.rho, "chi": cfg.objective.chi,
              **{k: f"{v:.4f}" for k, v in summary.items() if v is not None}},
    )
