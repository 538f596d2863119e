"""Every preset in jobs/configs loads and validates; the paper's presets are the shared base plus
their cell of the matrix; every search space in tune_spaces validates against every preset."""
from __future__ import annotations

import itertools

import pytest
import yaml

from jobs.config import load_job_config
from jobs.tune.space import load_space
from tests.jobs.helpers import REPO

CONFIGS = REPO / "jobs" / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
PAPER = [p for p in PRESETS if p.name.startswith("paper-")]
SPACES = sorted((REPO / "tune_spaces").glob("*.yaml"))
MATRIX = list(itertools.product(("vgg11", "wrn16"), ("cifar10", "cifar100"),
                                ("natural", "gaussian-rho0", "gaussian-rho1", "at-rho0", "at-rho1",
                                 "at-reg-rho0", "at-reg-rho1")))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_validates(path):
    cfg = load_job_config(path)
    assert cfg.run.name == path.stem


def test_the_paper_presets_are_the_matrix():
    assert sorted(p.stem for p in PAPER) == sorted(f"paper-{a}-{d}-{c}" for a, d, c in MATRIX)


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_a_paper_preset_states_only_its_cell_over_the_base(path):
    text = yaml.safe_load(path.read_text())
    assert text.pop("extends") == "base/paper.yaml"
    stated = {f"{s}.{k}" for s, fields in text.items() for k in fields}
    assert stated <= {"model.arch", "data.dataset", "objective.mode", "objective.rho", "objective.beta", "run.name"}
    cfg = load_job_config(path)
    arch, dataset, *cell = path.stem.removeprefix("paper-").split("-", 2)
    mode = cell[0].rsplit("-rho", 1)[0].replace("-", "_")
    assert (cfg.model.arch, cfg.data.dataset, cfg.objective.mode) == (arch, dataset, mode)
    assert cfg.objective.rho == (1.0 if cell[0].endswith("rho1") else 0.0)
    assert ("objective.beta" in stated) == (mode == "at_reg")
    # the base: PROTOCOL.md's schedule, on four GPU workers
    assert (cfg.model.neuron, cfg.model.timesteps, cfg.optim.epochs, cfg.optim.lr, cfg.optim.precision) == (
        "dlif", 8, 100, 0.1, "bf16")
    assert (cfg.run.num_workers, cfg.run.use_gpu, cfg.run.validation_gpus) == (4, True, 0.25)


@pytest.mark.parametrize("space, preset", list(itertools.product(SPACES, PRESETS)),
                         ids=[f"{s.stem}@{p.stem}" for s, p in itertools.product(SPACES, PRESETS)])
def test_every_space_validates_against_every_preset(space, preset):
    parsed = load_space(space, load_job_config(preset))
    assert parsed.name == space.stem and parsed.params
