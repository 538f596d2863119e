"""Per-sample results of a protocol: one :class:`RowResult` per row, per batch and merged."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .checks import Flag
from .protocol import WORST_CASE


@dataclass
class RowResult:
    """Per-sample outcome of one row.

    indices ``[M]``: positions in the evaluated set; correct ``[M]`` and predicted ``[M]``: after the
    attack; attacked ``[M]``: whether the attack ran on the sample (False for the samples a chained
    row skipped because an earlier row had fooled them; None = every sample).
    """

    name: str
    indices: torch.Tensor
    correct: torch.Tensor
    predicted: torch.Tensor
    eps: float = 0.0
    attacked: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.indices.numel())

    @property
    def n_attacked(self) -> int:
        return self.n if self.attacked is None else int(self.attacked.sum())

    @property
    def accuracy(self) -> float:
        return self.correct.float().mean().item() if self.n else float("nan")


@dataclass
class BatchResult:
    """What :func:`~stable_snn.attacks.runner.evaluate_batch` returns for one batch (CPU tensors, picklable)."""

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
    chained:        the rows that ran as links of a chain (their accuracy is cumulative).
    """

    protocol: str
    labels: torch.Tensor
    rows: dict[str, RowResult]
    flags: dict[str, Flag] = field(default_factory=dict)
    zero_gradient: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    chained: tuple[str, ...] = ()

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
        lines = [f"protocol `{self.protocol}`", "", "| row | eps | samples | attacked | accuracy |",
                 "| --- | --- | --- | --- | --- |"]
        for name, r in self.rows.items():
            eps = f"{r.eps * 255:g}/255" if r.eps else ("-" if name == WORST_CASE else "0")
            mark = " (chained)" if name in self.chained else ""
            lines.append(f"| {name}{mark} | {eps} | {r.n} | {r.n_attacked} | {100 * r.accuracy:.2f} |")
        if self.chained:
            lines += ["", "A chained row attacks only the samples still robust after the rows before it in its "
                          "chain; its accuracy is the robust accuracy after all of them."]
        if self.zero_gradient is not None:
            lines += ["", f"all-zero input gradients: {100 * self.zero_gradient_fraction:.2f} %"]
        if self.flags:
            raised = self.raised_flags
            lines += ["", f"sanity flags raised: {', '.join(raised) if raised else 'none'}", "",
                      "| check | raised | detail |", "| --- | --- | --- |"]
            lines += [f"| {f.name} | {'YES' if f.raised else 'no'} | {f.message} |" for f in self.flags.values()]
        return "\n".join(lines) + "\n"
