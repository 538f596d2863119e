"""How the benchmark measures: wall time, peak memory, FLOPs, matmul peaks and profiles of one call.

Every function takes the work as a zero-argument callable and the device it runs on.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak of memory allocated during ``fn()`` above what was allocated before it, in MiB."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter``'s formulas (matmuls and convolutions).

    A dispatch mode over ``flop_registry`` rather than ``FlopCounterMode`` itself, whose
    module tracker cannot follow the attacks' ``torch.autograd.grad`` on a leaf input.
    """
    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    with Count() as counter:
        fn()
    return int(counter.total)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, repeats: int = 10) -> float:
    """Best GFLOP/s of an n x n x n matmul (best of ``repeats``: the machine's noise only slows it)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX.  Elsewhere (e.g. an AVX2-only CPU) bf16 is emulated, about 90x slower
    than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


GEMM_OPS = ("mm", "addmm", "bmm", "linear", "matmul", "conv", "convolution")


def op_category(name: str) -> str:
    n = name.lower()
    if n.startswith("aten::") and any(k in n for k in GEMM_OPS) and "backward" not in n.replace("convolution_backward", ""):
        return "matmul/conv"
    if "compiled" in n or "torch-compiled" in n or "graph" in n or n.startswith("cpp_fused") or "inductor" in n:
        return "fused neuron kernels"
    if "batch_norm" in n:
        return "batchnorm"
    if "pool" in n:
        return "pooling"
    if any(k in n for k in ("copy_", "to_copy", "_to", "clone", "contiguous", "cat", "stack")):
        return "copies/casts"
    if n.startswith("aten::"):
        return "other aten (elementwise, reductions)"
    return "python/autograd overhead"


def profile_step(fn, device: torch.device, top: int = 15) -> dict:
    """Self time by op category and the top ops, for one call of ``fn``."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, getattr(e, key) / 1e3, e.count) for e in prof.key_averages()]
    total = sum(r[1] for r in rows) or 1.0
    cats: dict[str, float] = defaultdict(float)
    for name, ms, _ in rows:
        cats[op_category(name)] += ms
    return {
        "total_ms": round(total, 1),
        "by_category_ms": {k: round(v, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": n, "self_ms": round(ms, 1), "calls": c}
                    for n, ms, c in sorted(rows, key=lambda r: -r[1])[:top]],
    }
