"""The contract of every attack (stable_snn/attacks/base.py), parametrised over all of them."""
from __future__ import annotations

import pytest
import torch

from stable_snn.attacks import APGD, APGDT, ASSG, FABT, FGSM, PGD, RFGSM, SAPGD, GaussianNoise, Square
from tests.attacks.helpers import accuracy

# every attack bounded by an eps-ball, with small budgets so the suite stays fast
ATTACKS = {
    "fgsm": lambda eps=8 / 255: FGSM(eps=eps),
    "pgd": lambda eps=8 / 255: PGD(eps=eps, alpha=2 / 255, steps=3),
    "pgd-no-start": lambda eps=8 / 255: PGD(eps=eps, alpha=2 / 255, steps=3, random_start=False),
    "apgd-ce": lambda eps=8 / 255: APGD(eps=eps, steps=4, loss="ce"),
    "apgd-dlr": lambda eps=8 / 255: APGD(eps=eps, steps=4, loss="dlr"),
    "apgd-ce-2-restarts": lambda eps=8 / 255: APGD(eps=eps, steps=3, n_restarts=2, loss="ce"),
    "square": lambda eps=8 / 255: Square(eps=eps, n_queries=20),
    "square-unrescaled": lambda eps=8 / 255: Square(eps=eps, n_queries=20, rescale_schedule=False),
    "apgd-t": lambda eps=8 / 255: APGDT(eps=eps, steps=3, n_target_classes=2),
    "fab-t": lambda eps=8 / 255: FABT(eps=eps, steps=3, n_target_classes=2),
    "fab-t-2-restarts": lambda eps=8 / 255: FABT(eps=eps, steps=2, n_restarts=2, n_target_classes=1),
    "assg-sapgd": lambda eps=8 / 255: SAPGD(eps=eps, steps=3),
    "assg-sapgd-triangle": lambda eps=8 / 255: SAPGD(eps=eps, steps=3, assg=ASSG(shape="triangle", bound=0.8)),
    "sa-pgd": lambda eps=8 / 255: SAPGD(eps=eps, steps=3, assg=None),
}
ALL = {**ATTACKS, "rfgsm": lambda: RFGSM()}


def _run(attack, model, x, y, seed=0):
    return attack(model, x, y, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(ALL))
def test_output_in_unit_box_and_eps_ball(name, tiny_model, batch):
    x, y = batch
    attack = ALL[name]()
    adv = _run(attack, tiny_model, x, y)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= attack.eps + 1e-6


@pytest.mark.parametrize("name", list(ALL))
def test_model_mode_restored(name, tiny_model, batch):
    x, y = batch
    tiny_model.train()
    tiny_model.features[0].bn.eval()  # a mixed state must come back exactly
    modes = [m.training for m in tiny_model.modules()]
    _run(ALL[name](), tiny_model, x, y)
    assert [m.training for m in tiny_model.modules()] == modes


@pytest.mark.parametrize("name", list(ALL))
def test_batchnorm_runs_in_eval_mode_during_the_attack(name, tiny_model, batch):
    """A network left in train mode: an attack that ran its passes in train mode would normalise with
    batch statistics and move every BatchNorm's running statistics; in eval mode they stay put."""
    x, y = batch
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items() if "running" in k}
    assert before  # the network has BatchNorm statistics to watch
    _run(ALL[name](), tiny_model, x, y)
    after = tiny_model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize("name", list(ALL))
def test_parameter_grads_untouched(name, tiny_model, batch):
    x, y = batch
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())
    _run(ALL[name](), tiny_model, x, y)
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("name", list(ALL))
def test_same_seed_same_output_and_inputs_untouched(name, tiny_model, batch):
    x, y = batch
    x0 = x.clone()
    a = _run(ALL[name](), tiny_model, x, y, seed=3)
    b = _run(ALL[name](), tiny_model, x, y, seed=3)
    assert torch.equal(a, b)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-dlr", "square", "apgd-t", "assg-sapgd"])
def test_seed_matters_for_random_attacks(name, tiny_model, batch):
    x, y = batch
    assert not torch.equal(_run(ALL[name](), tiny_model, x, y, seed=1), _run(ALL[name](), tiny_model, x, y, seed=2))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_eps_zero_gives_clean_accuracy(name, tiny_model, batch):
    x, y = batch
    adv = _run(ATTACKS[name](0.0), tiny_model, x, y)
    assert torch.equal(adv, x)
    assert accuracy(tiny_model, adv, y) == accuracy(tiny_model, x, y)


@pytest.mark.parametrize("name", list(ALL))
def test_global_rng_untouched(name, tiny_model, batch):
    x, y = batch
    state = torch.get_rng_state()
    _run(ALL[name](), tiny_model, x, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_shapes_raise(tiny_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        APGD()(tiny_model, x[0], y)
    with pytest.raises(ValueError, match="labels"):
        Square()(tiny_model, x, y[:3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="kl"), "loss"), (dict(steps=0), "steps"), (dict(n_restarts=0), "n_restarts"), (dict(eps=2.0), "eps"),
    (dict(rho=0.0), "rho"),
])
def test_apgd_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APGD(**kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(n_queries=0), "n_queries"), (dict(p_init=0.0), "p_init"),
                                           (dict(eps=-1.0), "eps")])
def test_square_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Square(**kwargs)


def test_gaussian_noise_in_unit_box_and_reproducible(tiny_model, batch):
    x, y = batch
    a = GaussianNoise()(tiny_model, x, y, torch.Generator().manual_seed(0))
    b = GaussianNoise()(tiny_model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("make, match", [
    (lambda: APGDT(n_target_classes=0), "n_target_classes"), (lambda: FABT(steps=0), "steps"),
    (lambda: FABT(eta=0.5), "eta"), (lambda: FABT(alpha_max=0.0), "alpha_max"), (lambda: SAPGD(steps=0), "steps"),
    (lambda: SAPGD(assg="yes"), "assg"), (lambda: ASSG(shape="gauss"), "shape"), (lambda: ASSG(bound=0.5), "bound"),
    (lambda: ASSG(beta1=1.0), "beta1"),
])
def test_new_attacks_reject_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: APGDT(n_target_classes=10), lambda: FABT(n_target_classes=10)])
def test_targeted_attacks_need_enough_classes(make, tiny_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="needs at least 11 classes"):
        make()(tiny_model, x, y)
