"""What a protocol is: a name and an ordered list of rows, with its worst case and its checks.

A :class:`Row` is one line of a results table: a name, an attack factory (``None`` = clean) and
how it runs: with an attacker's surrogate gradient, on a subset, or as a link of a chain
(``after``): it then attacks only the samples still correctly classified under every row named in
``after`` (all earlier rows), as AutoAttack runs its attacks one after the other on the samples
still robust. A chained row's result is the robust accuracy *after* those rows and itself (a
sample an earlier row fooled counts as fooled, with that row's prediction), so the last link of a
chain is the chain's per-sample worst case, and each link is paid for only on the samples left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..neurons import Surrogate
from .base import Attack

WORST_CASE = "worst-case"
"""Name of the per-sample worst-case row added to protocols with ``worst_case=True``."""

AttackFactory = Callable[[], Attack]


@dataclass(frozen=True)
class Row:
    """One line of a protocol.

    name:          metric-safe name (letters, digits, ``-_.``), e.g. ``"pgd-10"``.
    attack:        factory of the attack, ``None`` for the clean row.
    eps:           the attack's eps (0 for clean), for tables and curves.
    surrogate:     the attacker's surrogate gradient during the attack (None: the model's own); a
                   surrogate the model's fused backend lacks runs the row on backend "reference".
    subset:        run only on the first ``subset`` samples of the evaluated set.
    in_worst_case: whether the row enters the per-sample worst case.
    after:         earlier rows: attack only the samples correct under all of them (a chain link).
    """

    name: str
    attack: AttackFactory | None = None
    eps: float = 0.0
    surrogate: Surrogate | None = None
    subset: int | None = None
    in_worst_case: bool = True
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"row name {self.name!r} is invalid: allowed letters, digits and '-_.'")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"row {self.name!r}: subset={self.subset!r} is invalid: allowed an integer >= 1")
        if self.surrogate is not None and not isinstance(self.surrogate, Surrogate):
            raise ValueError(f"row {self.name!r}: surrogate must be a Surrogate (Triangle, Arctan), got {self.surrogate!r}")
        if not isinstance(self.after, tuple):
            raise ValueError(f"row {self.name!r}: after must be a tuple of row names, got {self.after!r}")
        if self.after and self.subset is not None:
            raise ValueError(f"row {self.name!r}: a chained row (after={self.after}) cannot run on a subset")


def chain(rows: Iterable[Row], after: tuple[str, ...] = ("clean",)) -> tuple[Row, ...]:
    """``rows`` as links of one chain: each attacks the samples robust under ``after`` and every link before it."""
    out, names = [], list(after)
    for row in rows:
        out.append(Row(row.name, row.attack, row.eps, row.surrogate, row.subset, row.in_worst_case, tuple(names)))
        names.append(row.name)
    return tuple(out)


@dataclass(frozen=True)
class Protocol:
    """A named, ordered list of rows, with the worst case and the checks run on them.

    ``checks`` are callables ``check(rows, zero_gradient) -> Flag`` with a ``needs`` tuple of the
    rows they read (:mod:`.checks`).
    """

    name: str
    rows: tuple[Row, ...]
    worst_case: bool = True
    measure_zero_gradients: bool = False
    checks: tuple[Callable, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        names = [r.name for r in self.rows]
        if not names:
            raise ValueError(f"protocol {self.name!r} has no rows")
        if len(set(names)) != len(names) or WORST_CASE in names:
            raise ValueError(f"protocol {self.name!r}: row names must be unique and not {WORST_CASE!r}, got {names}")
        bad = [r.name for r in self.rows if r.in_worst_case and r.subset is not None]
        if self.worst_case and bad:
            raise ValueError(f"protocol {self.name!r}: subset rows {bad} cannot enter the worst case")
        by_name = {r.name: r for r in self.rows}
        for i, row in enumerate(self.rows):
            earlier = names[:i]
            late = [a for a in row.after if a not in earlier]
            if late:
                raise ValueError(f"protocol {self.name!r}: row {row.name!r} runs after {late}, which are not earlier rows")
            partial = [a for a in row.after if by_name[a].subset is not None]
            if partial:
                raise ValueError(f"protocol {self.name!r}: row {row.name!r} cannot run after subset rows {partial}")
        for check in self.checks:
            missing = [n for n in check.needs if n not in names]
            if missing:
                raise ValueError(f"protocol {self.name!r}: check {check.name!r} refers to unknown rows {missing}")
            if getattr(check, "needs_zero_gradients", False) and not self.measure_zero_gradients:
                raise ValueError(f"protocol {self.name!r}: check {check.name!r} needs measure_zero_gradients=True")

    @property
    def attacks(self) -> list[tuple[str, AttackFactory | None]]:
        """The ordered ``(row name, attack factory)`` pairs."""
        return [(r.name, r.attack) for r in self.rows]

    @property
    def row_names(self) -> list[str]:
        """Rows in result order, the worst case last when there is one."""
        return [r.name for r in self.rows] + ([WORST_CASE] if self.worst_case else [])
