"""Named, fixed evaluation protocols and the runner that applies one to a test set.

A :class:`Protocol` is a name and an ordered list of rows; a :class:`Row` is a name and an
attack factory (``None`` = clean), optionally run with the attacker's surrogate width or on
a subset. Protocols (PROTOCOL.md, "Evaluation"):

* ``paper-table1``: clean, FGSM (8/255), PGD-7 (2.55/255), PGD-10 (2/255), PGD-20 (1/255),
  PGD-40 (0.5/255), all PGD with a uniform random start, APGD-CE and APGD-DLR (10 steps,
  1 restart, rho 0.75), all at eps = 8/255, and the per-sample worst case;
* ``quick``: clean, FGSM, PGD-10 and their worst case;
* ``eps-curve``: clean and PGD-10 at eps in {1, 2, 4, 6, 8, 12, 16}/255 with step eps/4;
* ``obfuscation-checks``: clean, PGD-10, PGD-10 with the attacker's surrogate width omega in
  {0.5, 1, 2}, Square (1000 queries) on the first :data:`SQUARE_SUBSET` samples, PGD-10 at
  eps in {16, 32, 64}/255, the fraction of all-zero input gradients, and flags
  (:mod:`.checks`): Square or another omega beats PGD-10, robust accuracy above 5 % at
  64/255, any all-zero input gradient.

The runner cuts the set into batches of a fixed size; the randomness of row ``r`` on batch
``b`` comes from a generator seeded by ``(seed, b, r's name)``, so results do not depend on
how batches are spread over workers (:func:`evaluate_batch` + :func:`merge_batches`), nor on
which other rows a protocol holds.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..neurons import surrogate_width as attacker_surrogate_width
from .apgd import APGD
from .base import Attack, check_images, decode, eval_mode
from .checks import BeatsReference, FallsToZero, Flag, ZeroGradients, zero_gradient_mask
from .fgsm import FGSM
from .pgd import PGD
from .square import Square
from .worst_case import worst_case

WORST_CASE = "worst-case"
"""Name of the per-sample worst-case row added to protocols with ``worst_case=True``."""

SQUARE_SUBSET = 200
"""Samples (the first of the evaluated set) the Square check of ``obfuscation-checks`` runs on."""

AttackFactory = Callable[[], Attack]


@dataclass(frozen=True)
class Row:
    """One line of a protocol.

    name:            metric-safe name (letters, digits, ``-_.``), e.g. ``"pgd-10"``.
    attack:          factory of the attack, ``None`` for the clean row.
    eps:             the attack's eps (0 for clean), for tables and curves.
    surrogate_width: attacker's surrogate width omega during the attack (None: the model's own).
    subset:          run only on the first ``subset`` samples of the evaluated set.
    in_worst_case:   whether the row enters the per-sample worst case.
    """

    name: str
    attack: AttackFactory | None = None
    eps: float = 0.0
    surrogate_width: float | None = None
    subset: int | None = None
    in_worst_case: bool = True

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"row name {self.name!r} is invalid: allowed letters, digits and '-_.'")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"row {self.name!r}: subset={self.subset!r} is invalid: allowed an integer >= 1")
        if self.surrogate_width is not None and self.surrogate_width <= 0:
            raise ValueError(f"row {self.name!r}: surrogate_width must be > 0, got {self.surrogate_width}")


@dataclass(frozen=True)
class Protocol:
    """A named, ordered list of rows, with the worst case and the checks run on them."""

    name: str
    rows: tuple[Row, ...]
    worst_case: bool = True
    measure_zero_gradients: bool = False
    checks: tuple[Callable[..., Flag], ...] = ()
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
        for check in self.checks:
            needed = [getattr(check, "reference", None), *getattr(check, "candidates", ()), getattr(check, "row", None)]
            missing = [n for n in needed if n is not None and n not in names]
            if missing:
                raise ValueError(f"protocol {self.name!r}: check {check.name!r} refers to unknown rows {missing}")
            if isinstance(check, ZeroGradients) and not self.measure_zero_gradients:
                raise ValueError(f"protocol {self.name!r}: check {check.name!r} needs measure_zero_gradients=True")

    @property
    def attacks(self) -> list[tuple[str, AttackFactory | None]]:
        """The ordered ``(row name, attack factory)`` pairs."""
        return [(r.name, r.attack) for r in self.rows]

    @property
    def row_names(self) -> list[str]:
        """Rows in result order, the worst case last when there is one."""
        return [r.name for r in self.rows] + ([WORST_CASE] if self.worst_case else [])


# -- the named protocols -----------------------------------------------------------------

EPS = 8 / 255


def _pgd(eps: float, alpha: float, steps: int) -> AttackFactory:
    return partial(PGD, eps=eps, alpha=alpha, steps=steps, random_start=True)


def _eps_tag(k: float) -> str:
    return f"{k:g}"


def _pgd10_at(k: float, name: str | None = None, **kw) -> Row:
    eps = k / 255
    return Row(name or f"pgd-10_eps{_eps_tag(k)}", _pgd(eps, eps / 4, 10), eps=eps, **kw)


def _build_protocols() -> dict[str, Protocol]:
    clean = Row("clean")
    fgsm = Row("fgsm", partial(FGSM, eps=EPS), eps=EPS)
    pgd10 = Row("pgd-10", _pgd(EPS, 2 / 255, 10), eps=EPS)
    omegas = (0.5, 1.0, 2.0)
    large = (16, 32, 64)
    protocols = [
        Protocol("paper-table1", (
            clean, fgsm,
            Row("pgd-7", _pgd(EPS, 2.55 / 255, 7), eps=EPS),
            pgd10,
            Row("pgd-20", _pgd(EPS, 1 / 255, 20), eps=EPS),
            Row("pgd-40", _pgd(EPS, 0.5 / 255, 40), eps=EPS),
            Row("apgd-ce", partial(APGD, eps=EPS, steps=10, n_restarts=1, rho=0.75, loss="ce"), eps=EPS),
            Row("apgd-dlr", partial(APGD, eps=EPS, steps=10, n_restarts=1, rho=0.75, loss="dlr"), eps=EPS),
        ), description="Table 1 of the paper at eps 8/255 and the per-sample worst case"),
        Protocol("quick", (clean, fgsm, pgd10), description="clean, FGSM and PGD-10 at eps 8/255"),
        Protocol("eps-curve", (clean, *(_pgd10_at(k) for k in (1, 2, 4, 6, 8, 12, 16))), worst_case=False,
                 description="PGD-10 (step eps/4) at eps 1..16/255"),
        Protocol(
            "obfuscation-checks",
            (
                clean, pgd10,
                *(Row(f"pgd-10_omega{w:g}", _pgd(EPS, 2 / 255, 10), eps=EPS, surrogate_width=w) for w in omegas),
                Row("square", partial(Square, eps=EPS, n_queries=1000, p_init=0.8), eps=EPS,
                    subset=SQUARE_SUBSET, in_worst_case=False),
                *(_pgd10_at(k, in_worst_case=False) for k in large),
            ),
            measure_zero_gradients=True,
            checks=(
                BeatsReference("black-box-beats-white-box", "pgd-10", ("square",)),
                BeatsReference("surrogate-width-beats-white-box", "pgd-10",
                               tuple(f"pgd-10_omega{w:g}" for w in omegas)),
                FallsToZero("not-falling-to-zero", f"pgd-10_eps{large[-1]}", max_accuracy=0.05),
                ZeroGradients("zero-gradients", tolerance=0.0),
            ),
            description="Square and other surrogate widths against PGD-10, large eps, zero gradients",
        ),
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


# -- results -------------------------------------------------------------------------------

@dataclass
class RowResult:
    """Per-sample outcome of one row: positions ``[M]`` in the evaluated set, correct ``[M]``, predicted ``[M]``."""

    name: str
    indices: torch.Tensor
    correct: torch.Tensor
    predicted: torch.Tensor
    eps: float = 0.0

    @property
    def n(self) -> int:
        return int(self.indices.numel())

    @property
    def accuracy(self) -> float:
        return self.correct.float().mean().item() if self.n else float("nan")


@dataclass
class BatchResult:
    """What :func:`evaluate_batch` returns for one batch (CPU tensors, picklable)."""

    batch_index: int
    positions: torch.Tensor
    labels: torch.Tensor
    rows: dict[str, RowResult]
    zero_gradient: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ProtocolResult:
    """Per-sample results of a protocol over ``N`` samples (positions ``0..N-1``).

    rows:           ``{row: RowResult}`` in protocol order, the worst case last.
    flags:          ``{check: Flag}``.
    zero_gradient:  BoolTensor ``[N]`` (protocols measuring it), else None.
    seconds:        attack time per row, summed over batches.
    """

    protocol: str
    labels: torch.Tensor
    rows: dict[str, RowResult]
    flags: dict[str, Flag] = field(default_factory=dict)
    zero_gradient: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracies(self) -> dict[str, float]:
        return {name: r.accuracy for name, r in self.rows.items()}

    @property
    def correct(self) -> dict[str, torch.Tensor]:
        return {name: r.correct for name, r in self.rows.items()}

    @property
    def zero_gradient_fraction(self) -> float | None:
        return None if self.zero_gradient is None else self.zero_gradient.float().mean().item()

    @property
    def raised_flags(self) -> list[str]:
        return [name for name, f in self.flags.items() if f.raised]

    def records(self, sample_ids: torch.Tensor | np.ndarray | None = None) -> list[dict]:
        """One dict per sample and row: sample, label, attack, correct, predicted.

        ``sample_ids`` ``[N]`` maps positions to ids (e.g. indices in the test split).
        """
        ids = None if sample_ids is None else torch.as_tensor(np.asarray(sample_ids)).long()
        out = []
        for name, r in self.rows.items():
            samples = r.indices if ids is None else ids[r.indices]
            for s, pos, c, p in zip(samples.tolist(), r.indices.tolist(), r.correct.tolist(), r.predicted.tolist()):
                out.append({"sample": s, "label": int(self.labels[pos]), "attack": name, "correct": bool(c),
                            "predicted": int(p)})
        return out

    def to_markdown(self) -> str:
        lines = [f"protocol `{self.protocol}`", "", "| row | eps | samples | accuracy |", "| --- | --- | --- | --- |"]
        for name, r in self.rows.items():
            eps = f"{r.eps * 255:g}/255" if r.eps else ("-" if name == WORST_CASE else "0")
            lines.append(f"| {name} | {eps} | {r.n} | {100 * r.accuracy:.2f} |")
        if self.zero_gradient is not None:
            lines += ["", f"all-zero input gradients: {100 * self.zero_gradient_fraction:.2f} %"]
        if self.flags:
            lines += ["", "| check | raised | detail |", "| --- | --- | --- |"]
            lines += [f"| {f.name} | {'YES' if f.raised else 'no'} | {f.message} |" for f in self.flags.values()]
        return "\n".join(lines) + "\n"


# -- the runner ----------------------------------------------------------------------------

def row_generator(seed: int, batch_index: int, row_name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of ``row_name`` on batch ``batch_index``: seeded from (seed, batch, name) only."""
    state = np.random.SeedSequence([int(seed), int(batch_index), zlib.crc32(row_name.encode())])
    g = torch.Generator(device=device)
    g.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return g


def split_batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """``[(batch_index, start, stop), ...]`` covering ``range(n)`` in batches of ``batch_size``."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: allowed an integer >= 1")
    return [(b, s, min(s + batch_size, n)) for b, s in enumerate(range(0, n, batch_size))]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return decode(model(x)).argmax(1)


def evaluate_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, protocol: Protocol | str, *,
                   generator_seed: int, batch_index: int, positions: torch.Tensor | None = None,
                   on_row: Callable[[int, RowResult, float], None] | None = None) -> BatchResult:
    """Run every row of ``protocol`` on one batch.

    images ``[B, C, H, W]`` in [0, 1]; labels ``[B]``; positions ``[B]``: the samples' positions in
    the evaluated set (default ``0..B-1``), which decide subset rows. Tensors move to the model's
    device; results come back on the CPU. ``on_row(batch_index, row_result, seconds)`` is called
    as each row finishes.
    """
    protocol = get_protocol(protocol)
    check_images(images, labels)
    device = _device_of(model)
    x, y = images.to(device).float(), labels.to(device).long()
    positions = torch.arange(len(y)) if positions is None else torch.as_tensor(positions).long().cpu()
    rows, seconds = {}, {}
    for row in protocol.rows:
        start = time.perf_counter()
        keep = torch.ones(len(y), dtype=torch.bool) if row.subset is None else positions < row.subset
        xk, yk = x[keep.to(device)], y[keep.to(device)]
        if row.attack is None or len(yk) == 0:
            adv = xk
        else:
            attack = row.attack()
            generator = row_generator(generator_seed, batch_index, row.name, device)
            if row.surrogate_width is None:
                adv = attack(model, xk, yk, generator)
            else:
                with attacker_surrogate_width(model, row.surrogate_width):
                    adv = attack(model, xk, yk, generator)
        pred = _predict(model, adv) if len(yk) else yk
        seconds[row.name] = time.perf_counter() - start
        rows[row.name] = RowResult(row.name, positions[keep], (pred == yk).cpu(), pred.cpu(), row.eps)
        if on_row is not None:
            on_row(batch_index, rows[row.name], seconds[row.name])
    zero = zero_gradient_mask(model, x, y).cpu() if protocol.measure_zero_gradients else None
    return BatchResult(batch_index, positions, labels.cpu().long(), rows, zero, seconds)


def merge_batches(protocol: Protocol | str, batches: Iterable[BatchResult]) -> ProtocolResult:
    """Merge batch results (any order, any worker) into one result; add the worst case and the flags."""
    protocol = get_protocol(protocol)
    batches = sorted(batches, key=lambda b: b.batch_index)
    if not batches:
        raise ValueError("merge_batches needs at least one batch")
    positions = torch.cat([b.positions for b in batches])
    order = torch.argsort(positions)
    if not torch.equal(positions[order], torch.arange(len(positions))):
        raise ValueError("batches must cover positions 0..N-1 exactly once")
    labels = torch.cat([b.labels for b in batches])[order]
    rows: dict[str, RowResult] = {}
    for row in protocol.rows:
        idx = torch.cat([b.rows[row.name].indices for b in batches])
        o = torch.argsort(idx)
        rows[row.name] = RowResult(
            row.name, idx[o],
            torch.cat([b.rows[row.name].correct for b in batches])[o],
            torch.cat([b.rows[row.name].predicted for b in batches])[o],
            row.eps,
        )
    if protocol.worst_case:
        members = [r.name for r in protocol.rows if r.in_worst_case]
        robust = worst_case({m: rows[m].correct for m in members})
        # predicted: the prediction of the first row (in protocol order) that fools the sample
        predicted = labels.clone()
        for m in reversed(members):
            predicted = torch.where(rows[m].correct, predicted, rows[m].predicted)
        eps = max(rows[m].eps for m in members)
        rows[WORST_CASE] = RowResult(WORST_CASE, torch.arange(len(labels)), robust, predicted, eps)
    zero = torch.cat([b.zero_gradient for b in batches])[order] if protocol.measure_zero_gradients else None
    flags = {check.name: check(rows, zero) for check in protocol.checks}
    seconds = {r.name: sum(b.seconds.get(r.name, 0.0) for b in batches) for r in protocol.rows}
    return ProtocolResult(protocol.name, labels, rows, flags, zero, seconds)


@dataclass(frozen=True)
class ProgressEvent:
    """One row done on one batch: running accuracy of ``row`` over the batches it has finished."""

    row: str
    batch_index: int
    batches_done: int
    num_batches: int
    samples: int
    correct: int
    seconds: float

    @property
    def running_accuracy(self) -> float:
        return self.correct / self.samples if self.samples else float("nan")


class ProgressTracker:
    """Accumulates row results (batches in any order) and calls ``callback(ProgressEvent)`` for each."""

    def __init__(self, protocol: Protocol | str, num_batches: int, callback: Callable[[ProgressEvent], None] | None):
        self.protocol = get_protocol(protocol)
        self.num_batches = num_batches
        self.callback = callback
        self.batches = {r.name: 0 for r in self.protocol.rows}
        self.samples = {r.name: 0 for r in self.protocol.rows}
        self.correct = {r.name: 0 for r in self.protocol.rows}

    def row_done(self, batch_index: int, row: RowResult, seconds: float) -> None:
        self.batches[row.name] += 1
        self.samples[row.name] += row.n
        self.correct[row.name] += int(row.correct.sum())
        if self.callback is not None:
            self.callback(ProgressEvent(row.name, batch_index, self.batches[row.name], self.num_batches,
                                        self.samples[row.name], self.correct[row.name], seconds))

    def batch_done(self, batch: BatchResult) -> None:
        """All rows of a batch at once (results coming back from a worker)."""
        for name, row in batch.rows.items():
            self.row_done(batch.batch_index, row, batch.seconds.get(name, 0.0))


def evaluate_protocol(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, protocol: Protocol | str, *,
                      batch_size: int, generator_seed: int,
                      progress: Callable[[ProgressEvent], None] | None = None) -> ProtocolResult:
    """Run ``protocol`` on ``images`` ``[N, C, H, W]`` / ``labels`` ``[N]`` in-process, batch by batch.

    Same result as spreading :func:`evaluate_batch` over workers with the same ``batch_size`` and
    ``generator_seed`` and merging with :func:`merge_batches`.
    """
    protocol = get_protocol(protocol)
    check_images(images, labels)
    if len(labels) == 0:
        raise ValueError("evaluate_protocol needs at least one sample")
    batches = split_batches(len(labels), batch_size)
    tracker = ProgressTracker(protocol, len(batches), progress)
    results = []
    for b, start, stop in batches:
        results.append(evaluate_batch(model, images[start:stop], labels[start:stop], protocol,
                                      generator_seed=generator_seed, batch_index=b, positions=torch.arange(start, stop),
                                      on_row=tracker.row_done))
    return merge_batches(protocol, results)
