"""Dependencies: everything the code imports is declared in pyproject.toml, every declared version is
pinned there once, the environment has those versions, and a logged model's requirements are the
project's pins of exactly what loading it imports."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions, version
from pathlib import Path

from jobs.dependencies import MODEL_DISTRIBUTIONS, canonical, model_requirements, pin_mismatches, requirement_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"stable_snn", "jobs", "infra", "tests"}


def declared(requirements: list[str]) -> set[str]:
    return {requirement_name(r) for r in requirements}


def third_party_imports(files) -> dict[str, set[str]]:
    """``{top-level module: files importing it}`` over every import statement of ``files`` (any depth)."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(Path(path).relative_to(REPO)))
    return found


@cache
def module_distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distribution_of(module: str, allowed: set[str]) -> str | None:
    """The declared distribution that provides ``module`` (None if no declared one does)."""
    provided = {canonical(d) for d in module_distributions().get(module, [])}
    hits = provided & allowed
    return min(hits) if hits else None


def undeclared(folders: list[str], allowed: set[str]) -> dict[str, set[str]]:
    files = [p for f in folders for p in (REPO / f).rglob("*.py")]
    return {m: where for m, where in third_party_imports(files).items() if distribution_of(m, allowed) is None}


def test_everything_the_code_imports_is_declared():
    assert undeclared(["stable_snn", "jobs", "infra"], declared(PROJECT["dependencies"])) == {}


def test_everything_the_tests_import_is_declared_for_the_tests():
    allowed = declared(PROJECT["dependencies"]) | declared(PROJECT["optional-dependencies"]["test"])
    assert undeclared(["tests"], allowed) == {}


def test_every_dependency_is_pinned_once():
    requirements = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]
    assert [r for r in requirements if "==" not in r] == []
    names = [requirement_name(r) for r in requirements]
    assert len(names) == len(set(names))
    # used without a direct import: optuna by Tune's TPE search, psutil by MLflow's system metrics
    assert {"optuna", "psutil"} <= set(names)


def test_the_environment_has_the_pinned_versions():
    assert pin_mismatches() == []
    assert pin_mismatches(["torch==0.0.1", "no-such-distribution==1.0"]) == [
        f"torch==0.0.1 (installed: {version('torch')})", "no-such-distribution==1.0 (installed: none)"]


LOADED_MODULES = """
import json, sys
import jobs.tracking.pyfunc_model, jobs.tracking.models
print(json.dumps(sorted(m.__file__ for name, m in list(sys.modules.items())
                        if name.split('.')[0] in ('jobs', 'stable_snn') and getattr(m, '__file__', None))))
"""


def test_a_model_requires_the_project_pins_of_what_loading_it_imports():
    """The code that loads a logged model (the pyfunc and what it imports of the project) imports
    exactly the distributions the model's requirements name, at the versions pyproject.toml pins."""
    out = subprocess.run([sys.executable, "-c", LOADED_MODULES], cwd=REPO, capture_output=True, text=True, check=True)
    files = json.loads(out.stdout)
    assert any(f.endswith("stable_snn/models/vgg.py") for f in files)
    deps = declared(PROJECT["dependencies"])
    needed = {distribution_of(m, deps) for m in third_party_imports(files)}
    assert None not in needed
    assert needed == set(MODEL_DISTRIBUTIONS)
    pins = {requirement_name(r): r for r in PROJECT["dependencies"]}
    assert model_requirements() == [pins[d] for d in MODEL_DISTRIBUTIONS]
