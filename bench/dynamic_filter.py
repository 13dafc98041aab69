"""Benchmark of the dynamic filtering op (paper §3.1) against a loop, an unfold and a grouped conv.

    python bench/dynamic_filter.py                      # B=8, T=16, C=3, 112×112, s=5, fwd+bwd
    python bench/dynamic_filter.py --reps 15 --grad filters --threads 1

Timing: every implementation runs forward then ``torch.autograd.grad`` (gradients for frames and
filters, or filters only with ``--grad filters`` — the model's case, frames are data) on fresh
tensors; the implementations are interleaved within each repetition (order rotated); medians
(and min, max) of the times are reported, and each speed ratio is the median of the
per-repetition ratios. Repetition 0 is an untimed warm-up; its totals are reported as
``first_call_ms`` (the unfold idiom's first call page-faults its ≈ 480 MB of fresh temporaries;
the timed repetitions are the warm ones, which still allocate them, as every call does).

Allocator (``--malloc``): with glibc's default policy a freed heap top above 2× the largest freed
chunk is returned to the OS, so the next large allocation page-faults again (≈ 5 ms per 19 MB on
this VM, ≈ 1 µs per 4 KiB page). Whether an implementation's buffers hit that depends on what
ran before it. ``system`` (default) measures as is; ``keep`` sets ``M_MMAP_THRESHOLD`` to its
32 MiB maximum and disables trimming for the whole process (all implementations) — the steady
state of a long-running process, or of jemalloc/tcmalloc. Allocations above 32 MiB (the unfold
idiom's) are mmapped and fault in both settings.

Memory: one forward+backward per implementation under ``torch.profiler`` with
``profile_memory``; every CPU allocation and free (address, bytes; oneDNN's internal buffers
included, they come from the same allocator) is replayed. ``peak_workspace`` counts only
allocations freed before the end (temporaries and saved tensors); ``peak_live`` also counts what
survives (the output and the gradients). The targets (batched ≥ 4× the loop, ≥ 50× the unfold
idiom of dynamic filter networks, workspace ≤ 3× the output; with CUDA, batched ≥ 20× the loop)
are checked on the unrounded values (bench/_verdict.py: over the limit is a fail; a target not
measured, such as the CUDA one without a GPU or the workspace one with ``--no-memory``, is null,
never a pass) and printed with the results as one JSON object; the ratio to a faster unfold +
batched-matmul variant is reported too.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import check, summarize

from dynamonet.models.motion import apply_dynamic_filters, apply_dynamic_filters_reference

Impl = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loop_filter(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """One ``F.conv2d`` per (sample, frame): the C channels as a batch of 1-channel images."""
    B, C, T, H, W = x.shape
    s = f.shape[-1]
    outs = [F.conv2d(x[b, :, t].unsqueeze(1), f[b, t].view(1, 1, s, s), padding=s // 2)  # (C, 1, H, W)
            for b in range(B) for t in range(T)]
    return torch.stack(outs, 0).view(B, T, C, H, W).permute(0, 2, 1, 3, 4)


def unfold_filter(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The dynamic-filter-network "local filtering" idiom: im2col, multiply by the taps, sum."""
    B, C, T, H, W = x.shape
    s = f.shape[-1]
    planes = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)
    cols = F.unfold(planes, s, padding=s // 2).view(B * T, C, s * s, H * W)  # (B·T, C, s·s, H·W)
    out = (cols * f.reshape(B * T, 1, s * s, 1)).sum(dim=2)  # (B·T, C, H·W)
    return out.view(B, T, C, H, W).transpose(1, 2)


def unfold_bmm_filter(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A faster unfold variant: im2col, then the tap contraction as one batched matmul."""
    B, C, T, H, W = x.shape
    s = f.shape[-1]
    planes = x.transpose(1, 2).reshape(B * T, C, H, W)
    cols = F.unfold(planes, s, padding=s // 2).view(B * T, C, s * s, H * W)
    out = torch.einsum("nckp,nk->ncp", cols, f.reshape(B * T, s * s))  # (B·T, C, H·W)
    return out.view(B, T, C, H, W).transpose(1, 2)


IMPLS: dict[str, Impl] = {"batched": apply_dynamic_filters, "loop": loop_filter, "unfold": unfold_filter,
                          "unfold_bmm": unfold_bmm_filter, "grouped_conv": apply_dynamic_filters_reference}
SLOW = ("unfold", "unfold_bmm")


def _inputs(shape: tuple[int, ...], s: int, grad: str, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, C, T, H, W = shape
    x = torch.rand(*shape, generator=g).to(device).requires_grad_(grad == "both")
    f = torch.randn(B, T, s * s, generator=g).softmax(-1).view(B, T, s, s).to(device).requires_grad_()
    return x, f


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _one(fn: Impl, x: torch.Tensor, f: torch.Tensor, up: torch.Tensor, device: str) -> tuple[float, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn(x, f)
    _sync(device)
    t1 = time.perf_counter()
    torch.autograd.grad(out, [t for t in (x, f) if t.requires_grad], up)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def time_impls(names: list[str], shape: tuple[int, ...], s: int, grad: str, reps: int, slow_reps: int,
               device: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Interleaved forward/backward timings in ms (and the warm-up call's), paired ratios ``other / batched``
    (unrounded: the targets are checked on them).

    Each repetition runs every implementation once (order rotated); a ratio is taken within a
    repetition, so a load change from other users of the machine hits both sides alike, and the
    median of those per-repetition ratios is reported.
    """
    up = torch.ones(*shape, device=device)
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    paired: dict[str, list[float]] = {n: [] for n in names if n != "batched"}
    first: dict[str, float] = {}
    for rep in range(reps + 1):  # repetition 0 is a warm-up
        order = names[rep % len(names):] + names[: rep % len(names)]
        totals = {}
        for name in order:
            if name in SLOW and rep > slow_reps:
                continue
            x, f = _inputs(shape, s, grad, device, seed=rep)
            fwd, bwd = _one(IMPLS[name], x, f, up, device)
            if rep > 0:
                samples[name].append((fwd, bwd))
                totals[name] = fwd + bwd
            else:
                first[name] = fwd + bwd
        for name in paired:
            if name in totals and "batched" in totals:
                paired[name].append(totals[name] / totals["batched"])
    out = {}
    for name, pairs in samples.items():
        tot = [1e3 * (a + b) for a, b in pairs]
        out[name] = {"forward": round(statistics.median(1e3 * a for a, _ in pairs), 2),
                     "backward": round(statistics.median(1e3 * b for _, b in pairs), 2),
                     "total": round(statistics.median(tot), 2), "total_min": round(min(tot), 2),
                     "total_max": round(max(tot), 2), "reps": len(pairs),
                     "first_call_ms": round(1e3 * first[name], 2)}
    ratios = {f"{n}_over_batched": statistics.median(v) for n, v in paired.items() if v}
    ratios.update({f"{n}_over_batched_min": min(v) for n, v in paired.items() if v})
    return out, ratios


def memory(name: str, shape: tuple[int, ...], s: int, grad: str) -> dict[str, float]:
    """Replay the allocation trace of one forward+backward (CPU): peak workspace and peak live bytes."""
    from torch.profiler import ProfilerActivity, profile

    x, f = _inputs(shape, s, grad, "cpu", seed=0)
    up = torch.ones(*shape)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = IMPLS[name](x, f)
        grads = torch.autograd.grad(out, [t for t in (x, f) if t.requires_grad], up)
    del out, grads  # the output and the gradients are results: alive to the end of the trace
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as fh:
            events = [e["args"] for e in json.load(fh)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.unlink(path)
    events.sort(key=lambda a: a["Ev Idx"])
    live: dict[int, int] = {}
    order: list[tuple[int, int]] = []
    for a in events:
        if a["Bytes"] > 0:
            live[a["Addr"]] = a["Bytes"]
        else:
            live.pop(a["Addr"], None)
        order.append((a["Addr"], a["Bytes"]))
    survivors = set(live)  # the output buffer and the gradients
    current = workspace = peak_live = peak_work = 0
    sizes: dict[int, int] = {}
    for addr, nbytes in order:
        if nbytes > 0:
            sizes[addr] = nbytes
            current += nbytes
            workspace += 0 if addr in survivors else nbytes
        elif addr in sizes:
            n = sizes.pop(addr)
            current -= n
            workspace -= 0 if addr in survivors else n
        peak_live, peak_work = max(peak_live, current), max(peak_work, workspace)
    out_bytes = x.numel() * x.element_size()
    return {"output_mb": round(out_bytes / 2**20, 2), "peak_workspace_mb": round(peak_work / 2**20, 2),
            "peak_live_mb": round(peak_live / 2**20, 2), "peak_workspace_over_output": peak_work / out_bytes,
            "peak_live_over_output": peak_live / out_bytes}


def set_malloc(policy: str) -> str:
    """``keep``: glibc keeps freed heap memory (mmap threshold 32 MiB, no trimming); see the docstring."""
    if policy == "system":
        return "system"
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "system (no glibc mallopt)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    return "keep (mmap threshold 32 MiB, trim threshold 1 GiB)" if ok else "system (mallopt failed)"


def cuda_part(shape: tuple[int, ...], s: int, grad: str, reps: int) -> dict | str:
    """Batched vs loop on CUDA (timings, ``loop_over_batched`` unrounded); a string if skipped."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA"
    t, r = time_impls(["batched", "loop"], shape, s, grad, reps, 0, "cuda")
    return {"device": torch.cuda.get_device_name(), "timing_ms": t, "loop_over_batched": r["loop_over_batched"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="dynamic filtering: batched vs loop vs unfold (JSON on stdout)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--reps", type=int, default=9, help="timed repetitions (after one warm-up)")
    p.add_argument("--unfold-reps", type=int, default=3, help="repetitions that include the slow unfold baselines")
    p.add_argument("--grad", choices=("both", "filters"), default="both",
                   help="gradients for frames and filters, or filters only (the model's case)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--malloc", choices=("system", "keep"), default="system",
                   help="glibc policy for freed memory, for all implementations (see the module docstring)")
    args = p.parse_args(argv)
    malloc = set_malloc(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.batch, args.channels, args.frames, args.size, args.size)
    names = ["batched", "loop", "grouped_conv", "unfold", "unfold_bmm"]
    timing, ratios = time_impls(names, shape, args.kernel_size, args.grad, args.reps, args.unfold_reps, "cpu")
    mem = {} if args.no_memory else {n: memory(n, shape, args.kernel_size, args.grad) for n in names}
    cuda = cuda_part(shape, args.kernel_size, args.grad, args.reps)
    targets = [
        check("cpu: batched >= 4x faster than the per-(sample, frame) loop, fwd+bwd",
              ratios.get("loop_over_batched"), ">=", 4.0),
        check("cpu: batched >= 50x faster than unfold, fwd+bwd", ratios.get("unfold_over_batched"), ">=", 50.0),
        check("cpu: batched peak workspace <= 3x the output",
              mem["batched"]["peak_workspace_over_output"] if mem else None, "<=", 3.0),
        check("cuda: batched >= 20x faster than the loop",
              cuda["loop_over_batched"] if isinstance(cuda, dict) else None, ">=", 20.0),
    ]
    result = {
        "config": {"shape_BCTHW": list(shape), "kernel_size": args.kernel_size, "grad": args.grad,
                   "threads": torch.get_num_threads(), "reps": args.reps, "unfold_reps": args.unfold_reps,
                   "malloc": malloc,
                   "torch": torch.__version__},
        "timing_ms": timing, "ratios": ratios, "memory": mem, "cuda": cuda, **summarize(targets),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
