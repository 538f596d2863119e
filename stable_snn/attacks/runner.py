"""The runner that applies a protocol to a set of images, batch by batch.

The set is cut into batches of a fixed size; the randomness of row ``r`` on batch ``b`` comes
from a generator seeded by ``(seed, b, r's name)``, so results do not depend on how batches are
spread over workers (:func:`evaluate_batch` + :func:`merge_batches`), nor on which other rows a
protocol holds. Chained rows (``Row.after``) attack only the batch's samples still robust under
the rows they follow.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .base import check_images, decode, eval_mode
from .checks import zero_gradient_mask
from .protocol import WORST_CASE, Protocol, Row
from .protocols import get_protocol
from .results import BatchResult, ProtocolResult, RowResult
from .view import attacker_view
from .worst_case import worst_case


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


def _attack(row: Row, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if row.attack is None or len(y) == 0:
        return x
    attack = row.attack()
    if row.surrogate is None:
        return attack(model, x, y, generator)
    with attacker_view(model, row.surrogate):
        return attack(model, x, y, generator)


def _run_row(row: Row, model, x, y, keep: torch.Tensor, rows: dict[str, RowResult], generator):
    """(correct, predicted, attacked) of ``row`` on the samples ``keep`` of the batch (CPU tensors)."""
    todo = keep.clone()
    for name in row.after:
        todo &= rows[name].correct
    device = x.device
    pred_todo = _predict(model, _attack(row, model, x[todo.to(device)], y[todo.to(device)], generator)) \
        if todo.any() else y[:0]
    labels = y.cpu()
    predicted = labels.clone()
    for name in reversed(row.after):  # the prediction of the first earlier row that fooled the sample
        predicted = torch.where(rows[name].correct, predicted, rows[name].predicted)
    predicted[todo] = pred_todo.cpu()
    return (predicted == labels)[keep], predicted[keep], todo[keep]


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
        generator = row_generator(generator_seed, batch_index, row.name, device)
        correct, predicted, attacked = _run_row(row, model, x, y, keep, rows, generator)
        seconds[row.name] = time.perf_counter() - start
        rows[row.name] = RowResult(row.name, positions[keep], correct, predicted, row.eps, attacked)
        if on_row is not None:
            on_row(batch_index, rows[row.name], seconds[row.name])
    zero = zero_gradient_mask(model, x, y).cpu() if protocol.measure_zero_gradients else None
    return BatchResult(batch_index, positions, labels.cpu().long(), rows, zero, seconds)


def _cat(parts: list[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts)[order]


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
        parts = [b.rows[row.name] for b in batches]
        o = torch.argsort(torch.cat([p.indices for p in parts]))
        attacked = [p.attacked if p.attacked is not None else torch.ones(p.n, dtype=torch.bool) for p in parts]
        rows[row.name] = RowResult(row.name, _cat([p.indices for p in parts], o), _cat([p.correct for p in parts], o),
                                   _cat([p.predicted for p in parts], o), row.eps, _cat(attacked, o))
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
    chained = tuple(r.name for r in protocol.rows if r.after)
    return ProtocolResult(protocol.name, labels, rows, flags, zero, seconds, chained)


@dataclass(frozen=True)
class ProgressEvent:
    """One row done on one batch: running accuracy of ``row`` over the batches it has finished.

    ``batches_complete``: batches whose every row is done (for an ETA).
    """

    row: str
    batch_index: int
    batches_done: int
    num_batches: int
    samples: int
    correct: int
    seconds: float
    batches_complete: int = 0

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
        self.rows_of_batch: dict[int, int] = {}
        self.complete = 0

    def row_done(self, batch_index: int, row: RowResult, seconds: float) -> None:
        self.batches[row.name] += 1
        self.samples[row.name] += row.n
        self.correct[row.name] += int(row.correct.sum())
        self.rows_of_batch[batch_index] = self.rows_of_batch.get(batch_index, 0) + 1
        if self.rows_of_batch[batch_index] == len(self.protocol.rows):
            self.complete += 1
        if self.callback is not None:
            self.callback(ProgressEvent(row.name, batch_index, self.batches[row.name], self.num_batches,
                                        self.samples[row.name], self.correct[row.name], seconds, self.complete))

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
