"""Progress inside an epoch: rank 0 writes a line every few percent with images/s and the time left,
or draws a tqdm bar on a terminal; the other ranks stay silent."""
from __future__ import annotations

import io
import logging

import torch

from jobs.training.progress import EpochProgress, duration
from jobs.training.steps import EpochGenerators, run_epoch
from stable_snn.objective import TwoPass, build_perturbation
from tests.jobs.training.test_steps import parts, tiny_config, tiny_dataset


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stable_snn.train" and "ETA" in r.getMessage()]


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_a_line_every_five_percent_with_the_rate_of_all_workers_and_the_time_left(caplog):
    caplog.set_level(logging.INFO, logger="stable_snn.train")
    clock = Clock()
    progress = EpochProgress("[run] epoch 1/3", steps=40, world=2, clock=clock, stream=io.StringIO())
    for _ in range(40):
        clock.now += 0.5  # a step of 16 images per worker every half second: 64 images/s over two workers
        progress.update(16)
    lines = progress_lines(caplog)
    assert len(lines) == 20  # 5 %, 10 %, ..., 100 %
    assert lines[0] == "[run] epoch 1/3    5% (2/40 steps)  64.0 img/s  ETA 19s"
    assert lines[9] == "[run] epoch 1/3   50% (20/40 steps)  64.0 img/s  ETA 10s"
    assert lines[-1].endswith("100% (40/40 steps)  64.0 img/s  ETA 0s")


def test_a_short_epoch_logs_every_step_once(caplog):
    caplog.set_level(logging.INFO, logger="stable_snn.train")
    clock = Clock()
    progress = EpochProgress("e", steps=3, clock=clock, stream=io.StringIO())
    for _ in range(3):
        clock.now += 1.0
        progress.update(8)
    assert [line.split("(")[1].split(")")[0] for line in progress_lines(caplog)] == ["1/3 steps", "2/3 steps", "3/3 steps"]


def test_on_a_terminal_a_tqdm_bar_instead_of_lines(caplog):
    caplog.set_level(logging.INFO, logger="stable_snn.train")
    terminal, clock = Terminal(), Clock()
    progress = EpochProgress("[run] epoch 2/3", steps=4, clock=clock, stream=terminal)
    for _ in range(4):
        clock.now += 1.0
        progress.update(8)
    progress.close()
    assert progress_lines(caplog) == []
    drawn = terminal.getvalue()
    assert "[run] epoch 2/3" in drawn and "4/4" in drawn and "img/s" in drawn


def test_run_epoch_reports_progress_from_rank_0_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stable_snn.train")
    cfg = tiny_config(tmp_path)
    lines = {}
    for rank in (0, 1):
        caplog.clear()
        model, optimizer, _ = parts(cfg)
        generators = EpochGenerators.create(cfg.run.seed)
        loader = torch.utils.data.DataLoader(tiny_dataset(8), batch_size=4, generator=generators.shuffle)
        run_epoch(cfg, model, TwoPass(model), optimizer, loader, build_perturbation(cfg.objective), generators,
                  torch.device("cpu"), epoch=2, rank=rank)
        lines[rank] = progress_lines(caplog)
    assert len(lines[0]) == 2 and all("img/s  ETA" in line for line in lines[0])
    assert lines[0][0].startswith("[steps] epoch 2/3   50% (1/2 steps)")
    assert lines[0][1].startswith("[steps] epoch 2/3  100% (2/2 steps)")
    assert lines[1] == []
