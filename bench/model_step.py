"""Training-step cost of DynamoNet (joint) over its backbone alone (paper §3.2, §4.3 training).

    python bench/model_step.py                 # the embedded default, 1 and 2 torch threads
    python bench/model_step.py --reps 30 --profile

One step = forward + α·FP + β·CE (paper eq. 3) + backward + SGD (Nesterov, momentum 0.9, weight
decay 1e-4) on a random batch of T+1-frame clips, exactly as a training worker does it. The model
and input size come from ``pipelines/recipes/embedded.yaml`` (arch, clip_len, crop_size,
batch_size, kernel_size, dmr_dim, ar_dim, head_channels, dropout, α, β, δ). The ``joint`` model
and the same architecture in ``backbone`` mode (global pool → dropout → FC) are stepped
alternately within each repetition; the ratio is the median of the per-repetition ratios, so
load from other users of the machine hits both alike. Target: ratio ≤ 1.15 on CPU, compared on the
unrounded median (bench/_verdict.py: over the limit is a fail). With CUDA, ResNeXt-101 at
16×112×112 with AMP and channels_last_3d is measured too (clips/s and ratio); that ratio has no
target, so its verdict is null (reported), as it is when there is no GPU (not measured). Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _verdict import check, summarize  # noqa: E402

from dynamonet.config import Config, load_config  # noqa: E402
from dynamonet.losses import compute_losses  # noqa: E402
from dynamonet.models import build_model_from_config  # noqa: E402
from dynamonet.train.optim import build_optimizer  # noqa: E402


def load_recipe(path: Path | None, overrides: list[str] | None = None) -> Config:
    """The recipe's validated config (model, clip and batch sizes, loss), as training builds it."""
    cfg = load_config(str(path) if path else None, overrides)
    if not cfg.model.num_classes:
        cfg.model.num_classes = cfg.data.synthetic.num_classes
    return cfg


class Stepper:
    """A model, its optimiser and one training step."""

    def __init__(self, mode: str, cfg: Config, device: str = "cpu", channels_last: bool = False,
                 amp: torch.dtype | None = None) -> None:
        torch.manual_seed(0)
        self.cfg, self.device, self.amp, self.channels_last = cfg, device, amp, channels_last
        cfg = copy.deepcopy(cfg)
        cfg.model.mode = mode
        self.model = build_model_from_config(cfg, cfg.model.num_classes).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.opt = build_optimizer(self.model, cfg.optim, cfg.data.batch_size)  # the training workers' SGD
        self.scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)

    def step(self, x: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step on ``x`` ``(B, 3, T, H, W)`` and its next frames ``target``."""
        autocast = torch.autocast(self.device, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with autocast:
            out = self.model(x)
            loss = self.cfg.loss
            terms = compute_losses(out, target, labels, alpha=loss.alpha, beta=loss.beta, delta=loss.huber_delta,
                                   fp_reduction=loss.fp_reduction)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def _batch(cfg: Config, seed: int, device: str, channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    """A random batch laid out as ``engine.prepare_batch`` hands it to the model: ``x`` = frames
    1..T and ``target`` = frames 2..T+1 of a T+1-frame clip, both contiguous (channels_last_3d
    ``x`` on CUDA), and labels."""
    g = torch.Generator().manual_seed(seed)
    B, T, S = cfg.data.batch_size, cfg.data.clip_len, cfg.data.crop_size
    clip = torch.rand(B, 3, T + 1, S, S, generator=g).to(device)
    labels = torch.randint(0, cfg.model.num_classes, (B,), generator=g).to(device)
    x = clip[:, :, :T].contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    return x, clip[:, :, 1:].contiguous(), labels


def compare(cfg: Config, reps: int, warmup: int, device: str = "cpu", **kw) -> dict:
    """Alternate joint and backbone steps; medians of step times (ms) and of the paired ratios
    (``ratio`` unrounded: it is what the target is checked on)."""
    steppers = {"joint": Stepper("joint", cfg, device, **kw), "backbone": Stepper("backbone", cfg, device, **kw)}
    times: dict[str, list[float]] = {k: [] for k in steppers}
    ratios = []
    for rep in range(warmup + reps):
        batch = _batch(cfg, rep, device, kw.get("channels_last", False))
        order = list(steppers) if rep % 2 == 0 else list(steppers)[::-1]
        now = {}
        for name in order:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steppers[name].step(*batch)
            if device == "cuda":
                torch.cuda.synchronize()
            now[name] = time.perf_counter() - t0
        if rep >= warmup:
            for k, v in now.items():
                times[k].append(1e3 * v)
            ratios.append(now["joint"] / now["backbone"])
    out = {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2)}
           for k, v in times.items()}
    out["ratio"] = statistics.median(ratios)
    out["ratio_p10_p90"] = [round(q, 3) for q in _quantiles(ratios)]
    out["clips_per_s"] = {k: round(cfg.data.batch_size / (statistics.median(v) / 1e3), 1) for k, v in times.items()}
    return out


def _quantiles(values: list[float]) -> tuple[float, float]:
    v = sorted(values)
    return v[int(0.1 * (len(v) - 1))], v[int(0.9 * (len(v) - 1))]


def profile_joint(cfg: Config, top: int = 10) -> list[dict]:
    """Self-CPU time of the heaviest ops in a few joint training steps (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    stepper = Stepper("joint", cfg)
    batch = _batch(cfg, 0, "cpu")
    for _ in range(2):
        stepper.step(*batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            stepper.step(*batch)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 5e3, 2), "calls_per_step": e.count // 5}
            for e in rows]


def cuda_part(reps: int, warmup: int, batch: int) -> dict | str:
    """ResNeXt-101 16×112×112, AMP + channels_last_3d, joint vs backbone on CUDA; a string if skipped."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA"
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cfg = load_recipe(None, ["model.arch=resnext101", "model.num_classes=400", "data.clip_len=16",
                             "data.crop_size=112", f"data.batch_size={batch}"])
    res = compare(cfg, reps, warmup, "cuda", channels_last=True, amp=amp)
    res["config"] = {"arch": "resnext101", "input": [batch, 3, 16, 112, 112], "amp": str(amp),
                     "channels_last_3d": True, "device": torch.cuda.get_device_name()}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DynamoNet joint vs backbone training step (JSON on stdout)")
    p.add_argument("--recipe", default=str(ROOT / "pipelines/recipes/embedded.yaml"), help="recipe YAML")
    p.add_argument("--reps", type=int, default=20, help="timed steps per model (alternating)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts to test")
    p.add_argument("--cuda-batch", type=int, default=16, help="ResNeXt-101 batch on CUDA")
    p.add_argument("--profile", action="store_true", help="add the heaviest ops of the joint step (1 thread)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. model.stem_pool=true (the target is defined for the recipe)")
    args = p.parse_args(argv)
    cfg = load_recipe(Path(args.recipe), args.overrides)
    overrides = args.overrides
    results, targets = {}, []
    for n in args.threads:
        torch.set_num_threads(n)
        results[f"threads_{n}"] = r = compare(cfg, args.reps, args.warmup)
        targets.append(check(f"cpu, {n} thread(s): joint / backbone step time <= 1.15", r["ratio"], "<=", 1.15))
    summary = {"model": dataclasses.asdict(cfg.model), "clip": [cfg.data.clip_len, cfg.data.crop_size],
               "batch_size": cfg.data.batch_size, "loss": dataclasses.asdict(cfg.loss)}
    out = {"config": {**summary, "recipe": str(Path(args.recipe).relative_to(ROOT)) if args.recipe.startswith(str(ROOT))
                      else args.recipe, "overrides": overrides, "reps": args.reps, "warmup": args.warmup,
                      "torch": torch.__version__},
           "cpu": results}
    if args.profile:
        torch.set_num_threads(1)
        out["profile_joint_1thread"] = profile_joint(cfg)
    out["cuda"] = cuda = cuda_part(args.reps, args.warmup, args.cuda_batch)
    targets.append(check("cuda resnext101 AMP+channels_last_3d: joint / backbone (reported, no target)",
                         cuda["ratio"] if isinstance(cuda, dict) else None, None, None))
    out.update(summarize(targets))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
