"""Running a protocol's attacks: in-process, or spread over Ray actors that each hold the model.

The driver puts the model in the object store once; each :class:`EvalWorker` actor takes
it out once, at construction, and then evaluates whole batches with
:func:`stable_snn.attacks.evaluate_batch`. Batches go to whichever actor is free
(``ActorPool``); the randomness of a batch depends only on (seed, batch index, row), so the
merged result equals the in-process one (``workers=0``) for the same batch size and seed.
"""
from __future__ import annotations

import copy
import os
from argparse import Namespace
from typing import Callable

import ray
import torch
from ray.util import ActorPool
from torch import nn

from stable_snn.attacks import (
    BatchResult, ProgressEvent, ProgressTracker, Protocol, ProtocolResult, evaluate_batch, evaluate_protocol,
    get_protocol, merge_batches, split_batches,
)

from ..openmp import openmp_env
from ..threads import use_reserved_cpus
from .data import EvalSet


class EvalWorker:
    """Holds the model (on ``device``) and evaluates batches of one protocol."""

    def __init__(self, model: nn.Module, protocol: Protocol, generator_seed: int, cpus: float = 1.0,
                 device: str = "cpu") -> None:
        self.threads = use_reserved_cpus(cpus)
        self.model = model.to(device).eval()
        self.protocol = protocol
        self.seed = generator_seed

    def run(self, images: torch.Tensor, labels: torch.Tensor, batch_index: int, start: int) -> BatchResult:
        positions = torch.arange(start, start + len(labels))
        return evaluate_batch(self.model, images, labels, self.protocol, generator_seed=self.seed,
                              batch_index=batch_index, positions=positions)


def evaluate_distributed(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, protocol: Protocol | str, *,
                         batch_size: int, generator_seed: int, workers: int,
                         progress: Callable[[ProgressEvent], None] | None = None,
                         cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> ProtocolResult:
    """Evaluate on ``workers`` Ray actors (Ray must be initialised); same result as in-process."""
    if workers < 1:
        raise ValueError(f"workers={workers!r}: use evaluate_protocol for in-process evaluation")
    protocol = get_protocol(protocol)
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    model_ref = ray.put(copy.deepcopy(model).cpu())  # the caller's model stays where it is
    actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(EvalWorker)
    actors = [actor_cls.remote(model_ref, protocol, generator_seed, cpus_per_worker, device) for _ in range(workers)]
    batches = split_batches(len(labels), batch_size)
    tracker = ProgressTracker(protocol, len(batches), progress)
    results = []
    try:
        pool = ActorPool(actors)
        submit = lambda actor, b: actor.run.remote(images[b[1]:b[2]], labels[b[1]:b[2]], b[0], b[1])  # noqa: E731
        for result in pool.map_unordered(submit, batches):
            tracker.batch_done(result)
            results.append(result)
    finally:
        for actor in actors:
            ray.kill(actor)
    return merge_batches(protocol, results)


def run_attacks(args: Namespace, protocol: Protocol, model: nn.Module, data: EvalSet,
                progress: Callable[[ProgressEvent], None] | None = None) -> ProtocolResult:
    """The protocol on ``data``: in-process with ``--workers 0``, else on that many Ray actors (Ray from
    ``--ray-address`` / ``$RAY_ADDRESS``, else a local instance); the result is the same either way."""
    if args.workers == 0:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        return evaluate_protocol(model.to(device).eval(), data.images, data.labels, protocol,
                                 batch_size=args.batch_size, generator_seed=args.seed, progress=progress)
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=args.ray_address, log_to_driver=True, runtime_env={"env_vars": openmp_env()})
    try:
        return evaluate_distributed(model, data.images, data.labels, protocol, batch_size=args.batch_size,
                                    generator_seed=args.seed, workers=args.workers, progress=progress,
                                    cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    finally:
        if started:
            ray.shutdown()
