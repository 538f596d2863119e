"""The named, fixed evaluation protocols (what ``jobs.evaluate --protocol`` runs).

* ``paper-table1``: clean, FGSM (8/255), PGD-7 (2.55/255), PGD-10 (2/255), PGD-20 (1/255),
  PGD-40 (0.5/255), all PGD with a uniform random start, APGD-CE and APGD-DLR (10 steps,
  1 restart, rho 0.75), all at eps = 8/255, each on every sample (the paper's numbers), and
  the per-sample worst case;
* ``quick``: clean, FGSM, PGD-10 and their worst case;
* ``eps-curve``: clean and PGD-10 at eps in {1, 2, 4, 6, 8, 12, 16}/255 with step eps/4;
* ``obfuscation-checks``: clean, PGD-10, PGD-10 with the attacker's triangle width omega in
  {0.5, 1, 2}, Square (1000 queries) on the first :data:`SQUARE_SUBSET` samples, PGD-10 at
  eps in {16, 32, 64}/255 and the zero-gradient fraction;
* ``autoattack``: standard AutoAttack at eps = 8/255 as a chain (each attack on the samples
  still robust): APGD-CE (100 iterations), APGD-T (9 targets x 100), FAB-T (9 targets x 100),
  Square (5,000 queries, AutoAttack's unrescaled schedule);
* ``adaptive``: attacks made for spiking networks, as a chain: APGD-CE-100 through the attacker's
  surrogates triangle omega in {0.25, 0.5, 1, 2} and arctan alpha in {2, 4, 8}, then ASSG + SA-PGD
  (100 steps, :mod:`.sapgd`);
* ``strict``: ``paper-table1``'s rows, PGD-100 (step 2/255, on every sample like PGD-10), the
  ``autoattack`` chain (the same rows, so the same numbers as ``autoattack`` alone) and the
  ``adaptive`` chain on the samples still robust after all of them; its worst case is the
  headline "robust accuracy (strict)". Sanity rows outside the worst case: PGD-10 at 64/255 and
  an unbounded PGD.

Sanity flags (:mod:`.checks`) run wherever a protocol has their rows: an iterative attack weaker
than FGSM, Square fooling samples the white-box attacks missed, accuracy above 5 % at 64/255,
an unbounded attack not reaching 0 %, PGD-100 more than 3 points below PGD-10, and all-zero
input gradients. The budgets of the long rows come from a :class:`Budget` (the full ones by
default; the tests build the same protocols with small ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..neurons import Arctan, Triangle
from .apgd import APGD, APGDT
from .checks import FallsToZero, OnlyFooledBy, WeakerThan, ZeroGradients, beats_reference
from .fab import FABT
from .fgsm import FGSM
from .pgd import PGD
from .protocol import WORST_CASE, AttackFactory, Protocol, Row, chain
from .sapgd import SAPGD
from .square import Square

EPS = 8 / 255
SQUARE_SUBSET = 200
"""Samples (the first of the evaluated set) the Square check of ``obfuscation-checks`` runs on."""

SWEEP_TRIANGLES = (0.25, 0.5, 1.0, 2.0)
SWEEP_ARCTANS = (2.0, 4.0, 8.0)
PAPER_ITERATIVE = ("pgd-7", "pgd-10", "pgd-20", "pgd-40", "apgd-ce", "apgd-dlr")


@dataclass(frozen=True)
class Budget:
    """Iterations and queries of the long rows: AutoAttack's standard ones and 100-step adaptive attacks."""

    apgd_steps: int = 100
    target_classes: int = 9
    fab_steps: int = 100
    square_queries: int = 5000
    sweep_steps: int = 100
    sapgd_steps: int = 100
    long_pgd_steps: int = 100


FULL = Budget()


def _pgd(eps: float, alpha: float, steps: int, random_start: bool = True) -> AttackFactory:
    return partial(PGD, eps=eps, alpha=alpha, steps=steps, random_start=random_start)


def _pgd10_at(k: float, **kw) -> Row:
    eps = k / 255
    return Row(f"pgd-10_eps{k:g}", _pgd(eps, eps / 4, 10), eps=eps, **kw)


def paper_rows(eps: float = EPS) -> tuple[Row, ...]:
    """Table 1 of the paper (PROTOCOL.md), each attack on every sample."""
    return (
        Row("fgsm", partial(FGSM, eps=eps), eps=eps),
        Row("pgd-7", _pgd(eps, 2.55 / 255, 7), eps=eps),
        Row("pgd-10", _pgd(eps, 2 / 255, 10), eps=eps),
        Row("pgd-20", _pgd(eps, 1 / 255, 20), eps=eps),
        Row("pgd-40", _pgd(eps, 0.5 / 255, 40), eps=eps),
        Row("apgd-ce", partial(APGD, eps=eps, steps=10, n_restarts=1, rho=0.75, loss="ce"), eps=eps),
        Row("apgd-dlr", partial(APGD, eps=eps, steps=10, n_restarts=1, rho=0.75, loss="dlr"), eps=eps),
    )


def autoattack_rows(eps: float = EPS, budget: Budget = FULL) -> tuple[Row, ...]:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) as a chain after the clean row."""
    b = budget
    return chain((
        Row("aa-apgd-ce", partial(APGD, eps=eps, steps=b.apgd_steps, n_restarts=1, rho=0.75, loss="ce"), eps=eps),
        Row("aa-apgd-t", partial(APGDT, eps=eps, steps=b.apgd_steps, n_restarts=1, n_target_classes=b.target_classes),
            eps=eps),
        Row("aa-fab-t", partial(FABT, eps=eps, steps=b.fab_steps, n_restarts=1, n_target_classes=b.target_classes),
            eps=eps),
        Row("aa-square", partial(Square, eps=eps, n_queries=b.square_queries, p_init=0.8, rescale_schedule=False),
            eps=eps),
    ))


def adaptive_rows(eps: float = EPS, budget: Budget = FULL, after: tuple[str, ...] = ("clean",)) -> tuple[Row, ...]:
    """The surrogate sweep (APGD-CE through other surrogates) and ASSG + SA-PGD, as a chain after ``after``."""
    apgd = partial(APGD, eps=eps, steps=budget.sweep_steps, n_restarts=1, rho=0.75, loss="ce")
    sweep = [Row(f"apgd-ce_triangle{w:g}", apgd, eps=eps, surrogate=Triangle(w)) for w in SWEEP_TRIANGLES]
    sweep += [Row(f"apgd-ce_arctan{a:g}", apgd, eps=eps, surrogate=Arctan(a)) for a in SWEEP_ARCTANS]
    return chain((*sweep, Row("assg-sapgd", partial(SAPGD, eps=eps, steps=budget.sapgd_steps), eps=eps)), after)


def iterative_vs_fgsm(rows: tuple[str, ...] = PAPER_ITERATIVE) -> WeakerThan:
    return WeakerThan("iterative-weaker-than-single-step", tuple((r, "fgsm") for r in rows),
                      explanation="an iterative attack should never do worse than FGSM; gradients may be obfuscated")


def autoattack_protocol(eps: float = EPS, budget: Budget = FULL) -> Protocol:
    rows = autoattack_rows(eps, budget)
    return Protocol("autoattack", (Row("clean"), *rows), measure_zero_gradients=True, checks=(
        OnlyFooledBy("black-box-beats-white-box", "aa-square", tuple(r.name for r in rows[:-1])),
        ZeroGradients(),
    ), description="standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the samples still robust")


def adaptive_protocol(eps: float = EPS, budget: Budget = FULL) -> Protocol:
    return Protocol("adaptive", (Row("clean"), *adaptive_rows(eps, budget)), measure_zero_gradients=True,
                    checks=(ZeroGradients(),),
                    description="APGD-CE-100 through other surrogates, then ASSG + SA-PGD, on the samples still robust")


def strict_protocol(eps: float = EPS, budget: Budget = FULL) -> Protocol:
    """paper-table1, PGD-100, autoattack and adaptive; sanity rows at 64/255 and unbounded (not in the worst case)."""
    paper = paper_rows(eps)
    # on every sample, like PGD-10 (same step, same random start): the flag pgd-100-beats-pgd-10 compares like with like
    long_pgd = Row(f"pgd-{budget.long_pgd_steps}", _pgd(eps, 2 / 255, budget.long_pgd_steps), eps=eps)
    aa = autoattack_rows(eps, budget)
    before = ("clean", *(r.name for r in (*paper, long_pgd, *aa)))
    adaptive = adaptive_rows(eps, budget, after=before)
    unbounded = Row("pgd-20_unbounded", _pgd(1.0, 0.1, 20, random_start=False), eps=1.0, in_worst_case=False,
                    after=("clean",))
    rows = (Row("clean"), *paper, long_pgd, *aa, *adaptive, _pgd10_at(64, in_worst_case=False, after=("clean",)),
            unbounded)
    white_box = ("fgsm", *PAPER_ITERATIVE, long_pgd.name, *(r.name for r in aa[:-1]))
    return Protocol("strict", rows, measure_zero_gradients=True, checks=(
        iterative_vs_fgsm(),
        OnlyFooledBy("black-box-beats-white-box", "aa-square", white_box),
        FallsToZero("not-falling-to-zero", "pgd-10_eps64", max_accuracy=0.05),
        FallsToZero("unbounded-not-reaching-zero", unbounded.name, max_accuracy=0.0),
        WeakerThan("pgd-100-beats-pgd-10", (("pgd-10", long_pgd.name),), margin=0.03,
                   explanation="short attacks overstate robustness here"),
        ZeroGradients(),
    ), description="worst case over paper-table1, autoattack and adaptive: robust accuracy (strict)")


def _build_protocols() -> dict[str, Protocol]:
    clean = Row("clean")
    paper = paper_rows()
    fgsm, pgd10 = paper[0], paper[2]
    omegas = (0.5, 1.0, 2.0)
    large = (16, 32, 64)
    protocols = [
        Protocol("paper-table1", (clean, *paper), measure_zero_gradients=True,
                 checks=(iterative_vs_fgsm(), ZeroGradients()),
                 description="Table 1 of the paper at eps 8/255 and the per-sample worst case"),
        Protocol("quick", (clean, fgsm, pgd10), checks=(iterative_vs_fgsm(("pgd-10",)),),
                 description="clean, FGSM and PGD-10 at eps 8/255"),
        Protocol("eps-curve", (clean, *(_pgd10_at(k) for k in (1, 2, 4, 6, 8, 12, 16))), worst_case=False,
                 description="PGD-10 (step eps/4) at eps 1..16/255"),
        Protocol(
            "obfuscation-checks",
            (
                clean, pgd10,
                *(Row(f"pgd-10_omega{w:g}", pgd10.attack, eps=EPS, surrogate=Triangle(w)) for w in omegas),
                Row("square", partial(Square, eps=EPS, n_queries=1000, p_init=0.8), eps=EPS,
                    subset=SQUARE_SUBSET, in_worst_case=False),
                *(_pgd10_at(k, in_worst_case=False) for k in large),
            ),
            measure_zero_gradients=True,
            checks=(
                beats_reference("black-box-beats-white-box", "pgd-10", ("square",)),
                beats_reference("surrogate-width-beats-white-box", "pgd-10", tuple(f"pgd-10_omega{w:g}" for w in omegas)),
                FallsToZero("not-falling-to-zero", f"pgd-10_eps{large[-1]}", max_accuracy=0.05),
                ZeroGradients("zero-gradients", tolerance=0.0),
            ),
            description="Square and other surrogate widths against PGD-10, large eps, zero gradients",
        ),
        autoattack_protocol(),
        adaptive_protocol(),
        strict_protocol(),
    ]
    return {p.name: p for p in protocols}


PROTOCOLS: dict[str, Protocol] = _build_protocols()


def list_protocols() -> list[str]:
    return list(PROTOCOLS)


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name`` (a :class:`Protocol` passes through); ValueError names the allowed ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; allowed: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["EPS", "FULL", "PROTOCOLS", "SQUARE_SUBSET", "WORST_CASE", "Budget", "adaptive_protocol",
           "adaptive_rows", "autoattack_protocol", "autoattack_rows", "get_protocol", "list_protocols",
           "paper_rows", "strict_protocol"]
