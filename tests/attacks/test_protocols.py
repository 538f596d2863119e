"""Named protocols (PROTOCOL.md's evaluation table) and the runner."""
from __future__ import annotations

import random
from functools import partial

import pytest
import torch

from stable_snn.attacks import (
    APGD, FGSM, PGD, PROTOCOLS, WORST_CASE, FallsToZero, Protocol, Row, Square, WeakerThan, ZeroGradients,
    beats_reference, evaluate_batch, evaluate_protocol, get_protocol, list_protocols, merge_batches, split_batches,
)
from stable_snn.neurons import Triangle, spiking_layers

EPS = 8 / 255


def test_names_and_unknown_protocol():
    assert list_protocols() == ["paper-table1", "quick", "eps-curve", "obfuscation-checks", "autoattack", "adaptive",
                                "strict"]
    with pytest.raises(ValueError, match="paper-table1, quick, eps-curve, obfuscation-checks, autoattack"):
        get_protocol("table-1")
    p = get_protocol("quick")
    assert get_protocol(p) is p


def _params(row):
    return vars(row.attack()) if row.attack else {}


def test_paper_table1_is_the_papers_table():
    p = get_protocol("paper-table1")
    assert p.row_names == ["clean", "fgsm", "pgd-7", "pgd-10", "pgd-20", "pgd-40", "apgd-ce", "apgd-dlr", WORST_CASE]
    rows = {r.name: r for r in p.rows}
    assert rows["clean"].attack is None
    fgsm = rows["fgsm"].attack()
    assert isinstance(fgsm, FGSM) and fgsm.eps == EPS
    for name, steps, alpha in [("pgd-7", 7, 2.55), ("pgd-10", 10, 2), ("pgd-20", 20, 1), ("pgd-40", 40, 0.5)]:
        a = rows[name].attack()
        assert isinstance(a, PGD) and a.eps == EPS and a.steps == steps and a.random_start
        assert a.alpha == pytest.approx(alpha / 255)
    for name, loss in [("apgd-ce", "ce"), ("apgd-dlr", "dlr")]:
        a = rows[name].attack()
        assert isinstance(a, APGD) and (a.eps, a.steps, a.n_restarts, a.rho, a.loss_name) == (EPS, 10, 1, 0.75, loss)
    assert all(r.in_worst_case and r.subset is None and r.surrogate is None and not r.after for r in p.rows)
    assert all(r.eps == pytest.approx(EPS) for r in p.rows[1:])


def test_quick_and_eps_curve():
    assert get_protocol("quick").row_names == ["clean", "fgsm", "pgd-10", WORST_CASE]
    curve = get_protocol("eps-curve")
    assert not curve.worst_case
    attacks = [r.attack() for r in curve.rows[1:]]
    assert [round(a.eps * 255, 6) for a in attacks] == [1, 2, 4, 6, 8, 12, 16]
    assert all(a.steps == 10 and a.alpha == pytest.approx(a.eps / 4) and a.random_start for a in attacks)


def test_obfuscation_checks():
    p = get_protocol("obfuscation-checks")
    rows = {r.name: r for r in p.rows}
    assert [rows[f"pgd-10_omega{w}"].surrogate for w in ("0.5", "1", "2")] == [Triangle(0.5), Triangle(1.0), Triangle(2.0)]
    square = rows["square"]
    assert isinstance(square.attack(), Square) and square.attack().n_queries == 1000 and square.subset >= 1
    assert not square.in_worst_case
    big = rows["pgd-10_eps64"].attack()
    assert big.eps == pytest.approx(64 / 255) and big.alpha == pytest.approx(16 / 255)
    assert p.measure_zero_gradients
    kinds = {type(c) for c in p.checks}
    assert kinds == {WeakerThan, FallsToZero, ZeroGradients}
    fall = next(c for c in p.checks if isinstance(c, FallsToZero))
    assert fall.row == "pgd-10_eps64" and fall.max_accuracy == 0.05


def test_row_names_are_metric_safe():
    for p in PROTOCOLS.values():
        for name in p.row_names:
            assert all(ch.isalnum() or ch in "-_." for ch in name), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=()), "no rows"),
    (dict(rows=(Row("a"), Row("a"))), "unique"),
    (dict(rows=(Row(WORST_CASE),)), "unique"),
    (dict(rows=(Row("a"), Row("s", subset=3))), "subset rows"),
    (dict(rows=(Row("a"),), checks=(FallsToZero("f", "nope"),)), "unknown rows"),
    (dict(rows=(Row("a"),), checks=(ZeroGradients(),)), "measure_zero_gradients"),
    (dict(rows=(Row("a", after=("b",)), Row("b"))), "not earlier rows"),
    (dict(rows=(Row("s", subset=3, in_worst_case=False), Row("a", after=("s",))), worst_case=False), "after subset rows"),
])
def test_protocol_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Protocol("p", **kwargs)


@pytest.mark.parametrize("name", ["a b", "x=1", ""])
def test_bad_row_names(name):
    with pytest.raises(ValueError, match="row name"):
        Row(name)


def small_protocol() -> Protocol:
    """Every kind of row, with tiny budgets."""
    return Protocol("small", (
        Row("clean"),
        Row("fgsm", partial(FGSM, eps=EPS), eps=EPS),
        Row("pgd-2", partial(PGD, eps=EPS, alpha=2 / 255, steps=2), eps=EPS),
        Row("apgd-ce", partial(APGD, eps=EPS, steps=2), eps=EPS),
        Row("pgd-2_omega2", partial(PGD, eps=EPS, alpha=2 / 255, steps=2), eps=EPS, surrogate=Triangle(2.0)),
        Row("square", partial(Square, eps=EPS, n_queries=5), eps=EPS, subset=5, in_worst_case=False),
    ), measure_zero_gradients=True, checks=(
        beats_reference("bb", "pgd-2", ("square",)), beats_reference("sw", "pgd-2", ("pgd-2_omega2",)),
        ZeroGradients(),
    ))


def _same(a, b):
    assert list(a.rows) == list(b.rows)
    for name in a.rows:
        ra, rb = a.rows[name], b.rows[name]
        assert torch.equal(ra.indices, rb.indices) and torch.equal(ra.correct, rb.correct), name
        assert torch.equal(ra.predicted, rb.predicted), name
    assert a.flags == b.flags
    assert torch.equal(a.zero_gradient, b.zero_gradient)


def test_results_do_not_depend_on_how_batches_are_spread(tiny_model):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 3, 32, 32, generator=g), torch.randint(0, 10, (10,), generator=g)
    protocol = small_protocol()
    events = []
    ref = evaluate_protocol(tiny_model, x, y, protocol, batch_size=4, generator_seed=3, progress=events.append)
    # two "workers" taking the batches in a shuffled order
    batches = split_batches(10, 4)
    assert batches == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    random.Random(0).shuffle(batches)
    parts = [evaluate_batch(tiny_model, x[s:e], y[s:e], protocol, generator_seed=3, batch_index=b,
                            positions=torch.arange(s, e)) for b, s, e in batches]
    _same(ref, merge_batches(protocol, parts))

    assert ref.rows["square"].indices.tolist() == [0, 1, 2, 3, 4]
    assert ref.rows[WORST_CASE].n == 10 and set(ref.flags) == {"bb", "sw", "zero-gradients"}
    assert len(events) == 3 * len(protocol.rows)
    last = {e.row: e for e in events}
    assert last["pgd-2"].batches_done == 3 and last["pgd-2"].running_accuracy == ref.accuracies["pgd-2"]


def test_same_row_same_result_in_any_protocol(tiny_model):
    """The generator of a row depends on (seed, batch, row name), not on the other rows."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    pgd = Row("pgd-2", partial(PGD, eps=EPS, alpha=2 / 255, steps=2), eps=EPS)
    alone = evaluate_protocol(tiny_model, x, y, Protocol("a", (pgd,)), batch_size=3, generator_seed=1)
    other = evaluate_protocol(tiny_model, x, y, Protocol("b", (Row("clean"), Row("fgsm", partial(FGSM)), pgd)),
                              batch_size=3, generator_seed=1)
    assert torch.equal(alone.rows["pgd-2"].predicted, other.rows["pgd-2"].predicted)


def test_worst_case_row_and_records(tiny_model):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    result = evaluate_protocol(tiny_model, x, y, small_protocol(), batch_size=6, generator_seed=0)
    members = ["clean", "fgsm", "pgd-2", "apgd-ce", "pgd-2_omega2"]
    expected = torch.stack([result.rows[m].correct for m in members]).all(0)
    worst = result.rows[WORST_CASE]
    assert torch.equal(worst.correct, expected)
    assert torch.equal(worst.predicted == result.labels, worst.correct)
    assert all(result.accuracies[WORST_CASE] <= result.accuracies[m] for m in members)

    records = result.records(sample_ids=torch.arange(100, 106))
    assert len(records) == 6 * 6 + 5  # six full rows (worst case included) and Square on five samples
    assert set(records[0]) == {"sample", "label", "attack", "correct", "predicted"}
    assert {r["sample"] for r in records} == set(range(100, 106))
    first = next(r for r in records if r["attack"] == "fgsm" and r["sample"] == 102)
    assert first["correct"] == bool(result.rows["fgsm"].correct[2]) and first["label"] == int(y[2])
    md = result.to_markdown()
    assert "| worst-case |" in md and "| square | 8/255 | 5 | 5 |" in md and "zero-gradients" in md


def test_surrogate_width_row_is_scoped(tiny_model):
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    surrogates = [m.surrogate for _, m in spiking_layers(tiny_model)]
    evaluate_protocol(tiny_model, x, y, small_protocol(), batch_size=4, generator_seed=0)
    assert [m.surrogate for _, m in spiking_layers(tiny_model)] == surrogates


def test_runner_rejects_bad_input(tiny_model):
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_protocol(tiny_model, x, y, "quick", batch_size=0, generator_seed=0)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_protocol(tiny_model, x, y, "nope", batch_size=2, generator_seed=0)
    with pytest.raises(ValueError, match="labels"):
        evaluate_protocol(tiny_model, x, y[:2], "quick", batch_size=2, generator_seed=0)
    with pytest.raises(ValueError, match="cover"):
        merge_batches("quick", [evaluate_batch(tiny_model, x, y, "quick", generator_seed=0, batch_index=1,
                                               positions=torch.arange(4, 8))])


# -- autoattack, adaptive, strict -----------------------------------------------------------------

def test_autoattack_is_standard_autoattack_as_a_chain():
    from stable_snn.attacks import APGDT, FABT

    p = get_protocol("autoattack")
    assert p.row_names == ["clean", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square", WORST_CASE]
    rows = {r.name: r for r in p.rows}
    assert [r.after for r in p.rows[1:]] == [("clean",), ("clean", "aa-apgd-ce"), ("clean", "aa-apgd-ce", "aa-apgd-t"),
                                             ("clean", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t")]
    ce, t, fab, square = (rows[n].attack() for n in p.row_names[1:5])
    assert isinstance(ce, APGD) and (ce.eps, ce.steps, ce.n_restarts, ce.rho, ce.loss_name) == (EPS, 100, 1, 0.75, "ce")
    assert isinstance(t, APGDT) and (t.steps, t.n_restarts, t.n_target_classes, t.loss_name) == (100, 1, 9, "dlr")
    assert isinstance(fab, FABT) and (fab.steps, fab.n_restarts, fab.n_target_classes) == (100, 1, 9)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    assert isinstance(square, Square) and (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert all(a.eps == EPS for a in (t, fab, square)) and p.measure_zero_gradients


def test_adaptive_sweeps_surrogates_then_assg_sapgd():
    from stable_snn.attacks import ASSG, SAPGD
    from stable_snn.neurons import Arctan

    p = get_protocol("adaptive")
    sweep = [r for r in p.rows if r.name.startswith("apgd-ce_")]
    assert [r.surrogate for r in sweep[:4]] == [Triangle(w) for w in (0.25, 0.5, 1.0, 2.0)]
    assert [(type(r.surrogate), r.surrogate.alpha) for r in sweep[4:]] == [(Arctan, a) for a in (2.0, 4.0, 8.0)]
    assert all(r.attack().steps == 100 and r.attack().loss_name == "ce" for r in sweep)
    last = p.rows[-1]
    sapgd = last.attack()
    assert last.name == "assg-sapgd" and isinstance(sapgd, SAPGD) and sapgd.steps == 100 and sapgd.assg == ASSG()
    assert last.after == ("clean", *(r.name for r in sweep))


def test_strict_holds_paper_autoattack_and_adaptive_rows():
    strict, paper, aa = get_protocol("strict"), get_protocol("paper-table1"), get_protocol("autoattack")
    rows = {r.name: r for r in strict.rows}
    for r in paper.rows + aa.rows:  # the same rows: the same numbers as those protocols alone
        assert rows[r.name].after == r.after and rows[r.name].eps == r.eps
        assert vars(rows[r.name].attack()) == vars(r.attack()) if r.attack else rows[r.name].attack is None
    adaptive = [r for r in strict.rows if r.name.startswith("apgd-ce_") or r.name == "assg-sapgd"]
    assert len(adaptive) == 8
    assert set(adaptive[0].after) == {r.name for r in strict.rows[:strict.rows.index(adaptive[0])]}
    outside = [r.name for r in strict.rows if not r.in_worst_case]
    assert outside == ["pgd-10_eps64", "pgd-20_unbounded"]
    unbounded = rows["pgd-20_unbounded"].attack()
    assert unbounded.eps == 1.0 and not unbounded.random_start
    assert rows["pgd-100"].attack().steps == 100 and rows["pgd-100"].attack().alpha == pytest.approx(2 / 255)
    assert rows["pgd-100"].after == rows["pgd-10"].after == ()  # compared with PGD-10 by a flag: on the same samples


def tiny_budget():
    from stable_snn.attacks import Budget

    return Budget(apgd_steps=2, target_classes=2, fab_steps=2, square_queries=5, sweep_steps=2, sapgd_steps=2,
                  long_pgd_steps=3)


def test_chained_rows_attack_only_the_samples_still_robust(tiny_model):
    from stable_snn.attacks.protocols import autoattack_protocol

    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = tiny_model(x).mean(0).argmax(1)  # every sample correct before the attacks
    y[:3] = (y[:3] + 1) % 10  # but these three
    result = evaluate_protocol(tiny_model, x, y, autoattack_protocol(EPS, tiny_budget()), batch_size=5,
                               generator_seed=0)
    names = ["clean", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square"]
    for before, name in zip(names, names[1:]):
        r, prev = result.rows[name], result.rows[before]
        assert torch.equal(r.attacked, prev.correct), name  # attacked exactly the samples still robust
        assert not (r.correct & ~prev.correct).any(), name  # cumulative: never robust again
        fooled_before = ~prev.correct
        assert torch.equal(r.predicted[fooled_before], prev.predicted[fooled_before]), name
    assert result.rows["aa-apgd-ce"].n_attacked == 9
    assert torch.equal(result.rows[WORST_CASE].correct, result.rows["aa-square"].correct)
    assert set(result.chained) == set(names[1:])


def test_strict_autoattack_rows_equal_the_autoattack_protocol(tiny_model):
    from stable_snn.attacks.protocols import autoattack_protocol, strict_protocol

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    with torch.no_grad():
        y[:4] = tiny_model(x[:4]).mean(0).argmax(1)
    budget = tiny_budget()
    aa = evaluate_protocol(tiny_model, x, y, autoattack_protocol(EPS, budget), batch_size=6, generator_seed=2)
    strict = evaluate_protocol(tiny_model, x, y, strict_protocol(EPS, budget), batch_size=6, generator_seed=2)
    for name in ("aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square"):
        assert torch.equal(aa.rows[name].correct, strict.rows[name].correct), name
    members = [r.name for r in strict_protocol(EPS, budget).rows if r.in_worst_case]
    assert torch.equal(strict.rows[WORST_CASE].correct, torch.stack([strict.rows[m].correct for m in members]).all(0))
    assert set(strict.flags) == {c.name for c in get_protocol("strict").checks}


def test_arctan_row_runs_on_the_reference_backend_and_restores_the_model(tiny_model):
    from stable_snn.neurons import Arctan

    assert tiny_model.backend == "eager"
    seen = []
    hook = tiny_model.register_forward_pre_hook(lambda m, _: seen.append((m.backend, type(spiking_layers(m)[0][1].surrogate))))
    x, y = torch.rand(3, 3, 32, 32), torch.randint(0, 10, (3,))
    protocol = Protocol("p", (Row("clean"), Row("fgsm_arctan", partial(FGSM, eps=EPS), eps=EPS, surrogate=Arctan(4.0))))
    try:
        evaluate_protocol(tiny_model, x, y, protocol, batch_size=3, generator_seed=0)
    finally:
        hook.remove()
    assert ("reference", Arctan) in seen  # the attack's forward pass
    assert tiny_model.backend == "eager" and all(type(m.surrogate) is Triangle for _, m in spiking_layers(tiny_model))
