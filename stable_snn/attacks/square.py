"""Square attack (Andriushchenko et al. 2020, Alg. 1 with the L-inf sampling of Alg. 2): black-box.

Random search on the margin loss ``L(x) = z_y - max_{i != y} z_i`` (a sample is fooled when
``L < 0``), using only the model's outputs:

* start: vertical stripes, ``x + eps * s`` with one random sign ``s`` per (channel, column);
* each query: a random square window of side ``h = round(sqrt(p * H * W))`` (clipped to
  ``[1, min(H, W) - 1]``) at a random position is set to ``x + eps * s_c`` with one random sign
  per channel, the candidate is projected to [0, 1], and kept if it lowers the margin;
* ``p`` follows the paper's schedule: ``p_init`` halved after 10, 50, 200, 500, 1000, 2000, 4000,
  6000 and 8000 iterations of a 10,000-query budget; with ``rescale_schedule`` (the default of the
  authors' code) these times are rescaled to ``n_queries``, without it they are kept as they are
  (AutoAttack runs 5,000 queries so: ``p`` then halves at 10, ..., 4000 and stops at ``p_init / 64``).

Each sample uses at most ``n_queries`` model evaluations per run (the start point counts);
samples already misclassified, or fooled, stop querying. Window positions and signs are
drawn per sample from the caller's generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Attack, check_eps

P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (out of 10,000) after which ``p`` is halved again."""


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i`` per sample, ``[B, C] -> [B]`` (negative: misclassified)."""
    is_label = F.one_hot(labels, logits.shape[1]).bool()
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    return z_y - logits.masked_fill(is_label, float("-inf")).max(dim=1).values


def p_selection(p_init: float, it: int, n_queries: int, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration ``it`` (the paper's schedule, rescaled to ``n_queries`` or not)."""
    scaled = int(it / n_queries * 10000) if rescale else int(it)
    halvings = sum(scaled > t for t in P_SCHEDULE)
    return p_init / 2 ** halvings


def _random_signs(shape, generator, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high]``."""
    return torch.randint(0, high + 1, (n,), generator=generator, device=device)


class Square(Attack):
    """Square attack, L-inf, untargeted, margin loss.

    Args:
        eps: radius of the L-inf ball.
        n_queries: model evaluations per sample and run (1000 in the obfuscation checks).
        p_init: initial fraction of pixels per square (0.8 for L-inf in the paper).
        n_restarts: runs, each on the samples no earlier run has fooled.
        rescale_schedule: rescale the schedule of ``p`` to ``n_queries`` (False in AutoAttack).
    """

    name = "square"

    def __init__(self, eps: float = 8 / 255, n_queries: int = 1000, p_init: float = 0.8, n_restarts: int = 1,
                 rescale_schedule: bool = True) -> None:
        super().__init__(eps)
        if int(n_queries) < 1:
            raise ValueError(f"n_queries={n_queries!r} is invalid: allowed an integer >= 1")
        if int(n_restarts) < 1:
            raise ValueError(f"n_restarts={n_restarts!r} is invalid: allowed an integer >= 1")
        self.n_queries = int(n_queries)
        self.p_init = check_eps("p_init", p_init)
        self.n_restarts = int(n_restarts)
        self.rescale_schedule = bool(rescale_schedule)

    def perturb(self, model, images, labels, generator):
        with torch.no_grad():
            margin = margin_loss(self.get_logits(model, images), labels)
            robust = margin > 0
            adv = images.clone()
            for _ in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_out, margin_out = self._single_run(model, images[idx], labels[idx], generator)
                adv[idx] = x_out
                robust[idx[margin_out <= 0]] = False
        return adv

    def _single_run(self, model, x, y, generator):
        n, c, h, w = x.shape
        eps, device = self.eps, x.device
        x_best = (x + eps * _random_signs((n, c, 1, w), generator, device)).clamp(0.0, 1.0)
        margin = margin_loss(self.get_logits(model, x_best), y)
        rows = torch.arange(h, device=device).view(1, 1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, 1, w)
        for it in range(1, self.n_queries):
            todo = (margin > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            m = todo.numel()
            x_cur, x_best_cur = x[todo], x_best[todo]
            side = int(round(math.sqrt(p_selection(self.p_init, it, self.n_queries, self.rescale_schedule) * h * w)))
            side = min(max(side, 1), min(h, w) - 1)
            top = _randint(h - side, m, generator, device).view(-1, 1, 1, 1)
            left = _randint(w - side, m, generator, device).view(-1, 1, 1, 1)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            candidate = x_best_cur
            unchanged = torch.ones(m, dtype=torch.bool, device=device)
            for _ in range(10):  # redraw the signs of windows that would not change the point
                signs = _random_signs((m, c, 1, 1), generator, device)
                proposal = torch.where(window, (x_cur + eps * signs).clamp(0.0, 1.0), x_best_cur)
                candidate = torch.where(unchanged.view(-1, 1, 1, 1), proposal, candidate)
                unchanged = (candidate - x_best_cur).abs().flatten(1).amax(1) < 1e-7
                if not unchanged.any():
                    break
            new_margin = margin_loss(self.get_logits(model, candidate), y[todo])
            better = new_margin < margin[todo]
            keep = todo[better]
            x_best[keep] = candidate[better]
            margin[keep] = new_margin[better]
        return x_best, margin
