"""The project's dependencies, pinned once in ``pyproject.toml``, and the part of them a logged model needs.

``pyproject.toml`` is the one place a version is written: the job image (``infra/Dockerfile``)
installs from it, and a logged model's ``requirements.txt`` is the pins of the distributions that
loading the model imports (:data:`MODEL_DISTRIBUTIONS`), taken from it.
"""
from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROJECT = "stable-snn"

# What loading a logged model imports (jobs.tracking.models and the library it rebuilds the network
# with); tests/test_dependencies.py checks this against the imports of that code.
MODEL_DISTRIBUTIONS = ("torch", "torchvision", "mlflow", "numpy", "pyyaml", "pillow", "pyarrow")


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): lower case, runs of ``-_.`` as ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The canonical distribution name of a requirement string (``ray[tune]==2.60.0`` -> ``ray``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def project_dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement strings of ``[project] dependencies``: from pyproject.toml beside the code, or
    from the installed distribution's metadata when the code runs from an installed wheel."""
    if pyproject.is_file():
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"neither {pyproject} nor an installed {PROJECT} distribution lists the dependencies") from None
    return [r for r in requires if "extra ==" not in r]


def model_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The pinned requirements a logged model is loaded with: the project's pins of :data:`MODEL_DISTRIBUTIONS`."""
    pins = {requirement_name(r): r.split(";")[0].strip() for r in project_dependencies(pyproject)}
    missing = [d for d in MODEL_DISTRIBUTIONS if d not in pins]
    if missing:
        raise ValueError(f"{pyproject} does not declare {', '.join(missing)}, which loading a model needs")
    return [pins[d] for d in MODEL_DISTRIBUTIONS]


def pin_mismatches(requirements: list[str] | None = None) -> list[str]:
    """The ``name==version`` requirements (the project's by default) that the running environment does
    not meet, each as ``requirement (installed: version)``; a local version label (``+cu130``) is ignored."""
    out = []
    for requirement in requirements if requirements is not None else project_dependencies():
        pin = re.search(r"==\s*([^\s;,]+)", requirement)
        if pin is None:
            continue
        try:
            have = metadata.version(requirement_name(requirement))
        except metadata.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != pin.group(1):
            out.append(f"{requirement.strip()} (installed: {have or 'none'})")
    return out
