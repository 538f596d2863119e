"""The training worker's steps, in-process and without Ray: the resume point, the per-epoch seeding,
one epoch, the report payload, the checkpoint state, and the test-only fault plan."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from jobs.config import job_config_from_dict, load_job_config
from jobs.errors import NonFiniteLossError
from jobs.training.checkpoints import NONFINITE_MARKER, load_checkpoint, save_checkpoint
from jobs.training.faults import FAULT_PLAN_ENV, FaultPlan, fault_plan_env, release_hold
from jobs.training.steps import (
    EpochGenerators, build_parts, checkpoint_state, epoch_seeds, gain_metrics, report_payload, restore, resume_point,
    run_epoch,
)
from stable_snn.config import build_network
from stable_snn.data import CIFARArrayDataset, ImageArrays
from stable_snn.objective import TwoPass, build_optimizer, build_perturbation
from tests.jobs.helpers import REPO

TINY = {"model": {"arch": "vgg5", "timesteps": 2, "width": 0.25, "classifier_width": 32},
        "objective": {"mode": "gaussian"}, "optim": {"epochs": 3, "batch_size": 4}}


def tiny_config(tmp_path, **run):
    return job_config_from_dict(TINY | {"run": {"name": "steps", "storage_path": str(tmp_path), "seed": 3, **run}})


def tiny_dataset(n: int = 16, augment: bool = True) -> CIFARArrayDataset:
    rng = np.random.default_rng(0)
    arrays = ImageArrays(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), (np.arange(n) % 10).astype(np.int64),
                         tuple(f"c{k}" for k in range(10)))
    return CIFARArrayDataset(arrays, augment=augment, seed=5)


def parts(cfg):
    torch.manual_seed(0)
    model = build_network(cfg)
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.epochs)
    return model, optimizer, scheduler


# -- resuming -----------------------------------------------------------------------------------


def test_a_new_run_starts_at_epoch_one():
    point = resume_point(None)
    assert (point.start_epoch, point.history, point.resumes) == (1, [], [])


def test_resume_point_and_state_from_a_saved_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    model, optimizer, scheduler = parts(cfg)
    for _ in range(2):
        optimizer.step()  # no gradients: the weights stay, the schedule moves on
        scheduler.step()
    history = [{"epoch": 1, "train_loss": 2.3}, {"epoch": 2, "train_loss": 2.1}]
    save_checkpoint(tmp_path / "ck", checkpoint_state(model, optimizer, scheduler, 2, history, [1]), cfg)
    expected_draw = torch.rand(4)  # the global generator right after the state was taken

    state, loaded_cfg = load_checkpoint(tmp_path / "ck")
    point = resume_point(state)
    assert loaded_cfg == cfg
    assert point.start_epoch == 3 and point.history == history
    assert point.resumes == [1, 2]  # resumed after epoch 1 once before, now after epoch 2
    fresh_model, fresh_optimizer, fresh_scheduler = parts(cfg)
    with torch.no_grad():
        next(fresh_model.parameters()).add_(1.0)
    restore(state, fresh_model, fresh_optimizer, fresh_scheduler)
    assert all(torch.equal(a, b) for a, b in zip(fresh_model.state_dict().values(), model.state_dict().values()))
    assert fresh_scheduler.last_epoch == 2 and fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert torch.equal(torch.rand(4), expected_draw)  # the global RNG state came back too


# -- per-epoch randomness -------------------------------------------------------------------------


def epoch_draws(generators: EpochGenerators, loader, dataset, epoch: int, rank: int = 0):
    generators.start_epoch(loader, dataset, seed=3, epoch=epoch, rank=rank)
    batches = list(loader)
    return (torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches]),
            torch.rand(5, generator=generators.attack), torch.rand(5, generator=generators.regularizer))


def run_of(epochs: range, rank: int = 0):
    """The draws of ``epochs`` by one worker process whose generators were created at its start."""
    dataset = tiny_dataset()
    generators = EpochGenerators.create(seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True,
                                         generator=generators.shuffle)
    return {e: epoch_draws(generators, loader, dataset, e, rank) for e in epochs}


def test_a_resumed_run_draws_what_an_uninterrupted_one_draws():
    uninterrupted = run_of(range(1, 4))
    resumed = run_of(range(2, 4))  # a new process starting at epoch 2, as after a restart
    for epoch in (2, 3):
        for a, b in zip(uninterrupted[epoch], resumed[epoch]):
            assert torch.equal(a, b), epoch
    first, second = uninterrupted[1], uninterrupted[2]
    assert not torch.equal(first[1], second[1])  # the shuffle differs between epochs
    assert not torch.equal(first[0][first[1].argsort()], second[0][second[1].argsort()])  # so does the augmentation


def test_the_regulariser_draws_agree_across_ranks_and_the_attack_draws_do_not():
    rank0, rank1 = run_of(range(1, 2), rank=0)[1], run_of(range(1, 2), rank=1)[1]
    assert torch.equal(rank0[3], rank1[3])
    assert not torch.equal(rank0[2], rank1[2])
    seeds = {epoch_seeds(3, e, r) for e in (1, 2) for r in (0, 1)}
    assert len({s[1] for s in seeds}) == 4 and len({s[2] for s in seeds}) == 2


# -- one epoch and what it reports --------------------------------------------------------------


def test_one_epoch_without_ray_reports_per_image_means(tmp_path):
    cfg = tiny_config(tmp_path)
    model, optimizer, _ = parts(cfg)
    dataset = tiny_dataset(8, augment=False)
    generators = EpochGenerators.create(cfg.run.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, generator=generators.shuffle)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = run_epoch(cfg, model, TwoPass(model), optimizer, loader, build_perturbation(cfg.objective), generators,
                        torch.device("cpu"), epoch=1)
    assert set(metrics) == {"train_loss", "train_task_loss", "train_ce_clean", "train_acc", "images_per_s", "lr",
                            "train_ce_pert", "train_pert_acc", "train_ms_mppd"}
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["train_acc"] <= 1.0 and metrics["lr"] == cfg.optim.lr
    assert metrics["train_loss"] == pytest.approx(0.5 * (metrics["train_ce_clean"] + metrics["train_ce_pert"])
                                                  + cfg.objective.rho * metrics["train_ms_mppd"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained


def test_report_payload_keeps_training_and_validation_numbers_without_the_gains():
    metrics = {"train_loss": 1.5, "lr": 0.1, "dlif_gain/l0_t0": 0.9, "dlif_gain/l1_t1": 1.1}
    val = {"val_clean_acc": 0.5, "val_robust_acc": 0.25, "sops_per_image": 1e6, "mppd_gain/conv1": 3.0}
    assert report_payload(4, metrics, val) == {"epoch": 4, "train_loss": 1.5, "lr": 0.1, "val_clean_acc": 0.5,
                                               "val_robust_acc": 0.25}
    assert report_payload(1, metrics, {}) == {"epoch": 1, "train_loss": 1.5, "lr": 0.1}


def test_gain_metrics_name_every_layer_and_step(tmp_path):
    model, _, _ = parts(tiny_config(tmp_path))
    gains = model.dlif_gains()
    metrics = gain_metrics(model)
    assert len(metrics) == gains.numel() and metrics["dlif_gain/l0_t1"] == pytest.approx(float(gains[0, 1]))


# -- what a worker trains with: seeds, the BatchNorm batch, loss scaling -------------------------


def one_epoch_run(cfg, dataset):
    """A worker's first epoch in-process, as the Ray worker runs it: its parts from the config, then
    the epoch's seeding and one epoch of train_step.  Returns (initial state, final state, metrics)."""
    parts = build_parts(cfg, dataset)
    initial = {k: v.clone() for k, v in parts.model.state_dict().items()}
    parts.generators.start_epoch(parts.loader, dataset, cfg.run.seed, 1, 0)
    metrics = run_epoch(cfg, parts.model, parts.forward, parts.optimizer, parts.loader,
                        build_perturbation(cfg.objective), parts.generators, torch.device("cpu"), epoch=1,
                        scaler=parts.scaler)
    return initial, parts.model.state_dict(), metrics


def test_a_seed_fixes_a_run_bit_for_bit(tmp_path):
    """Same run.seed: the same initial weights, data order, augmentation and RFGSM noise, so two
    one-epoch runs (fp32, CPU) end with identical weights, whatever the global RNG holds; another
    seed starts elsewhere."""
    cfg = job_config_from_dict(TINY | {"objective": {"mode": "at"}, "optim": {"epochs": 1, "batch_size": 4},
                                       "run": {"name": "seeded", "storage_path": str(tmp_path), "seed": 5}})
    first = one_epoch_run(cfg, tiny_dataset(16))
    torch.rand(1000)  # the global generator moves: nothing in a run may depend on it
    second = one_epoch_run(cfg, tiny_dataset(16))
    for a, b in ((first[0], second[0]), (first[1], second[1])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first[2] == {**second[2], "images_per_s": first[2]["images_per_s"]}
    assert any(not torch.equal(first[0][k], first[1][k]) for k in first[0])  # it trained
    other = build_parts(job_config_from_dict(cfg.to_dict() | {"run": {**cfg.to_dict()["run"], "seed": 6}}),
                        tiny_dataset(16)).model.state_dict()
    assert any(not torch.equal(first[0][k], other[k]) for k in other)


def test_a_four_worker_paper_preset_normalises_over_64_images():
    """optim.batch_size is the batch of one BatchNorm pass on every worker: a paper preset on 4 workers
    serves each worker batches of 64 (its own quarter of the data), global 256, lr scaled to 0.4."""
    cfg = load_job_config(REPO / "jobs" / "configs" / "paper-vgg11-cifar10-at-rho1.yaml",
                          ["model.width=0.125", "model.classifier_width=32", "data.loader_workers=0"])
    assert cfg.run.num_workers == 4 and cfg.optim.batch_size == 64
    dataset = tiny_dataset(600, augment=False)
    parts = build_parts(cfg, dataset, world_size=4, rank=1)
    assert parts.loader.batch_size == 64 and len(parts.loader) == 600 // 4 // 64
    images, _ = next(iter(parts.loader))
    assert images.shape[0] == 64  # what each BatchNorm of this worker normalises over, per pass
    assert parts.loader.sampler.num_replicas == 4 and parts.loader.sampler.rank == 1
    assert parts.optimizer.param_groups[0]["lr"] == pytest.approx(0.4)
    assert parts.scaler is None  # bf16: no loss scaling needed


def test_fp16_trains_with_a_loss_scaler(tmp_path):
    """fp16 gets a GradScaler that every step goes through (its growth tracker counts the good steps),
    and the checkpoint keeps its state for a resume; fp32 and bf16 get none."""
    cfg = job_config_from_dict(TINY | {"optim": {"epochs": 1, "batch_size": 4, "precision": "fp16"},
                                       "run": {"name": "fp16", "storage_path": str(tmp_path), "seed": 1}})
    dataset = tiny_dataset(8, augment=False)
    parts = build_parts(cfg, dataset)
    assert isinstance(parts.scaler, torch.amp.GradScaler) and parts.scaler.is_enabled()
    parts.generators.start_epoch(parts.loader, dataset, 1, 1, 0)
    metrics = run_epoch(cfg, parts.model, parts.forward, parts.optimizer, parts.loader, build_perturbation(cfg.objective),
                        parts.generators, torch.device("cpu"), epoch=1, scaler=parts.scaler)
    assert np.isfinite(metrics["train_loss"])
    assert parts.scaler.state_dict()["_growth_tracker"] == len(parts.loader) == 2
    state = checkpoint_state(parts.model, parts.optimizer, parts.scheduler, 1, [], [], parts.scaler)
    fresh = build_parts(cfg, dataset)
    restore(state, fresh.model, fresh.optimizer, fresh.scheduler, fresh.scaler)
    assert fresh.scaler.state_dict() == parts.scaler.state_dict()
    for precision in ("fp32", "bf16"):
        other = job_config_from_dict(cfg.to_dict() | {"optim": {**cfg.to_dict()["optim"], "precision": precision}})
        assert build_parts(other, dataset).scaler is None


# -- the test-only fault plan -------------------------------------------------------------------


def test_fault_plan_comes_from_its_environment_variable_only():
    assert FaultPlan.from_env({}) == FaultPlan()
    assert FaultPlan.from_env({FAULT_PLAN_ENV: '{"nan_at_epoch": 2}'}) == FaultPlan(nan_at_epoch=2)
    assert FaultPlan.from_env({FAULT_PLAN_ENV: '{"hold_at_epochs": [2, 3]}'}).hold_at_epochs == (2, 3)
    assert fault_plan_env({}) == {}
    assert fault_plan_env({FAULT_PLAN_ENV: '{"crash_at_epoch": 1}'}) == {FAULT_PLAN_ENV: '{"crash_at_epoch": 1}'}
    for bad, message in (('{"nan_at_epoch": 0}', "nan_at_epoch=0 is invalid"), ('{"oops": 1}', "not a fault plan"),
                         ("[", "not a fault plan"), ('{"hold_at_epochs": 2}', "hold_at_epochs=2 is invalid: allowed a list"),
                         ('{"hold_at_epochs": [2, 0]}', r"hold_at_epochs=\[2, 0\] is invalid: allowed a list")):
        with pytest.raises(ValueError, match=message):
            FaultPlan.from_env({FAULT_PLAN_ENV: bad})


def test_a_planned_nan_stops_the_epoch_naming_epoch_and_step_and_marks_the_run(tmp_path):
    cfg = tiny_config(tmp_path)
    model, optimizer, _ = parts(cfg)
    generators = EpochGenerators.create(cfg.run.seed)
    loader = torch.utils.data.DataLoader(tiny_dataset(16, augment=False), batch_size=4)
    with pytest.raises(NonFiniteLossError) as e:
        run_epoch(cfg, model, TwoPass(model), optimizer, loader, build_perturbation(cfg.objective), generators,
                  torch.device("cpu"), epoch=2, faults=FaultPlan(nan_at_epoch=2))
    assert "the loss became nan at epoch 2 step 3" in str(e.value)  # the middle of 4 steps, 1-based
    assert "last good checkpoint (epoch 1)" in str(e.value) and "python -m jobs.register" in str(e.value)
    marker = json.loads((tmp_path / "steps" / NONFINITE_MARKER).read_text())
    assert (marker["epoch"], marker["step"]) == (2, 3)


def test_a_planned_crash_ends_rank_0_once(tmp_path):
    cfg = tiny_config(tmp_path)
    model, _, _ = parts(cfg)
    plan = FaultPlan(crash_at_epoch=1)
    pid = os.fork()
    if pid == 0:  # the child plays rank 0 in the middle of epoch 1
        plan.inject(epoch=1, step=2, steps=4, rank=0, model=model, run_dir=tmp_path)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 17
    plan.inject(epoch=1, step=2, steps=4, rank=0, model=model, run_dir=tmp_path)  # once only: this process lives on
    plan.inject(epoch=1, step=2, steps=4, rank=1, model=model, run_dir=tmp_path / "other")  # never rank 1
    assert not (tmp_path / "other").exists()


def test_a_planned_hold_names_rank_0s_pid_and_waits_once_until_released(tmp_path):
    model, _, _ = parts(tiny_config(tmp_path))
    plan = FaultPlan(hold_at_epochs=(2, 3))
    held = tmp_path / ".held-epoch2"
    plan.inject(epoch=2, step=1, steps=4, rank=0, model=model, run_dir=str(tmp_path))  # not the middle of the epoch
    plan.inject(epoch=1, step=2, steps=4, rank=0, model=model, run_dir=str(tmp_path))  # not its epoch
    plan.inject(epoch=2, step=2, steps=4, rank=1, model=model, run_dir=str(tmp_path))  # not rank 0
    assert list(tmp_path.glob(".held-*")) == []

    worker = threading.Thread(target=plan.inject, kwargs=dict(epoch=2, step=2, steps=4, rank=0, model=model,
                                                              run_dir=str(tmp_path)))
    worker.start()
    deadline = time.monotonic() + 30
    while not held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.read_text() == str(os.getpid())
    time.sleep(0.5)
    assert worker.is_alive()  # held until released
    release_hold(tmp_path, 2)
    worker.join(timeout=10)
    assert not worker.is_alive()
    t0 = time.monotonic()
    plan.inject(epoch=2, step=2, steps=4, rank=0, model=model, run_dir=str(tmp_path))  # once: the restarted worker trains on
    assert time.monotonic() - t0 < 1 and held.read_text() == "release"


def test_an_unreleased_hold_trains_on_after_its_time(tmp_path, monkeypatch):
    from jobs.training import faults

    monkeypatch.setattr(faults, "HOLD_S", 0.5)
    model, _, _ = parts(tiny_config(tmp_path))
    t0 = time.monotonic()
    FaultPlan(hold_at_epochs=(3,)).inject(epoch=3, step=2, steps=4, rank=0, model=model, run_dir=str(tmp_path))
    assert 0.5 <= time.monotonic() - t0 < 5
    assert (tmp_path / ".held-epoch3").read_text() == str(os.getpid())


# -- a resumed run -------------------------------------------------------------------------------


def train_epochs(cfg, parts, epochs: range) -> None:
    """The worker's epoch loop without Ray: re-seed the epoch, train it, step the schedule."""
    perturbation = build_perturbation(cfg.objective)
    for epoch in epochs:
        parts.generators.start_epoch(parts.loader, parts.loader.dataset, cfg.run.seed, epoch, 0)
        run_epoch(cfg, parts.model, parts.forward, parts.optimizer, parts.loader, perturbation, parts.generators,
                  torch.device("cpu"), epoch)
        parts.scheduler.step()


def assert_same_tensors(a, b, where: str) -> None:
    """Equal nested state (dicts, lists, tensors, numbers), tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_a_resumed_run_reaches_the_weights_of_an_uninterrupted_one(tmp_path, loader_workers):
    """CPU, fp32, one worker: two epochs straight, against one epoch, its checkpoint written and read
    back, a fresh worker (new parts, the global RNG moved) restored from it and the second epoch.
    at_reg with RFGSM and SNN-RAT on a random 30 % of the rows of the Linear layers (>= 8 outputs), so
    the shuffle, augmentation, attack and regulariser draws all matter; the weights, BatchNorm buffers,
    momentum buffers and schedule agree bit for bit."""
    cfg = job_config_from_dict({
        "model": {"arch": "vgg5", "timesteps": 2, "width": 0.125, "classifier_width": 16},
        "objective": {"mode": "at_reg", "beta": 1e-3, "reg_row_min_outputs": 8},
        "optim": {"epochs": 2, "batch_size": 8}, "data": {"loader_workers": loader_workers},
        "run": {"name": "resumed", "storage_path": str(tmp_path), "seed": 3},
    })
    straight = build_parts(cfg, tiny_dataset(24))
    train_epochs(cfg, straight, range(1, 3))

    first = build_parts(cfg, tiny_dataset(24))
    train_epochs(cfg, first, range(1, 2))
    save_checkpoint(tmp_path / "ck", checkpoint_state(first.model, first.optimizer, first.scheduler, 1, [], []), cfg)
    torch.rand(1000)  # the restarted worker's process has its own global RNG
    resumed = build_parts(cfg, tiny_dataset(24))
    state, _ = load_checkpoint(tmp_path / "ck")
    restore(state, resumed.model, resumed.optimizer, resumed.scheduler)
    point = resume_point(state)
    assert point.start_epoch == 2
    train_epochs(cfg, resumed, range(point.start_epoch, cfg.optim.epochs + 1))

    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict(), "model")
    assert_same_tensors(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    assert_same_tensors(straight.scheduler.state_dict(), resumed.scheduler.state_dict(), "scheduler")
    assert straight.optimizer.state_dict()["state"]  # momentum buffers exist: they were compared
    one_epoch = first.model.state_dict()
    assert any(not torch.equal(one_epoch[k], resumed.model.state_dict()[k]) for k in one_epoch)  # epoch 2 trained
