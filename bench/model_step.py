"""Training-step cost of DynamoNet (joint) over its backbone alone (paper §3.2, §4.3 training).

    python bench/model_step.py                 # the embedded default, 1 and 2 torch threads
    python bench/model_step.py --reps 30 --profile

One step = forward + α·FP + β·CE (paper eq. 3) + backward + SGD (Nesterov, momentum 0.9, weight
decay 1e-4) on a random batch of T+1-frame clips, exactly as a training worker does it. The model
and input size come from ``pipelines/recipes/embedded.yaml`` (arch, clip_len, crop_size,
batch_size, kernel_size, dmr_dim, ar_dim, head_channels, dropout, α, β, δ). The ``joint`` model
and the same architecture in ``backbone`` mode (global pool → dropout → FC) are stepped
alternately within each repetition; the ratio is the median of the per-repetition ratios, so
load from other users of the machine hits both alike. Target: ratio ≤ 1.15 on CPU. With CUDA,
ResNeXt-101 at 16×112×112 with AMP and channels_last_3d is measured too (clips/s and ratio).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dynamonet.losses import compute_losses  # noqa: E402
from dynamonet.models import build_model  # noqa: E402


def load_recipe(path: Path) -> dict:
    """The model/data/loss settings of a recipe, with the config defaults for missing keys."""
    with open(path, encoding="utf-8") as fh:
        recipe = yaml.safe_load(fh)
    m, d, loss = recipe.get("model", {}), recipe.get("data", {}), recipe.get("loss", {})
    return {"arch": m.get("arch", "r3d18"), "kernel_size": m.get("kernel_size", 5), "dmr_dim": m.get("dmr_dim", 512),
            "ar_dim": m.get("ar_dim", 512), "head_channels": m.get("head_channels", 64),
            "dropout": m.get("dropout", 0.5), "clip_len": d.get("clip_len", 16), "crop_size": d.get("crop_size", 112),
            "batch_size": d.get("batch_size", 8), "num_classes": d.get("synthetic", {}).get("num_classes", 13),
            "alpha": loss.get("alpha", 0.1), "beta": loss.get("beta", 1.0), "delta": loss.get("huber_delta", 0.01)}


class Stepper:
    """A model, its optimiser and one training step."""

    def __init__(self, mode: str, cfg: dict, device: str = "cpu", channels_last: bool = False,
                 amp: torch.dtype | None = None) -> None:
        torch.manual_seed(0)
        self.cfg, self.device, self.amp, self.channels_last = cfg, device, amp, channels_last
        self.model = build_model(cfg["arch"], mode=mode, num_classes=cfg["num_classes"], clip_len=cfg["clip_len"],
                                 kernel_size=cfg["kernel_size"], dmr_dim=cfg["dmr_dim"], ar_dim=cfg["ar_dim"],
                                 head_channels=cfg["head_channels"], dropout=cfg["dropout"]).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)

    def step(self, clip: torch.Tensor, labels: torch.Tensor) -> None:
        T = self.cfg["clip_len"]
        x = clip[:, :, :T]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        autocast = torch.autocast(self.device, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with autocast:
            out = self.model(x)
            terms = compute_losses(out, clip[:, :, 1:], labels, alpha=self.cfg["alpha"], beta=self.cfg["beta"],
                                   delta=self.cfg["delta"])
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def _batch(cfg: dict, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T, S = cfg["batch_size"], cfg["clip_len"], cfg["crop_size"]
    clip = torch.rand(B, 3, T + 1, S, S, generator=g)
    labels = torch.randint(0, cfg["num_classes"], (B,), generator=g)
    return clip.to(device), labels.to(device)


def compare(cfg: dict, reps: int, warmup: int, device: str = "cpu", **kw) -> dict:
    """Alternate joint and backbone steps; medians of step times (ms) and of the paired ratios."""
    steppers = {"joint": Stepper("joint", cfg, device, **kw), "backbone": Stepper("backbone", cfg, device, **kw)}
    times: dict[str, list[float]] = {k: [] for k in steppers}
    ratios = []
    for rep in range(warmup + reps):
        clip, labels = _batch(cfg, rep, device)
        order = list(steppers) if rep % 2 == 0 else list(steppers)[::-1]
        now = {}
        for name in order:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steppers[name].step(clip, labels)
            if device == "cuda":
                torch.cuda.synchronize()
            now[name] = time.perf_counter() - t0
        if rep >= warmup:
            for k, v in now.items():
                times[k].append(1e3 * v)
            ratios.append(now["joint"] / now["backbone"])
    out = {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2)}
           for k, v in times.items()}
    out["ratio"] = round(statistics.median(ratios), 3)
    out["ratio_p10_p90"] = [round(q, 3) for q in _quantiles(ratios)]
    out["clips_per_s"] = {k: round(cfg["batch_size"] / (statistics.median(v) / 1e3), 1) for k, v in times.items()}
    return out


def _quantiles(values: list[float]) -> tuple[float, float]:
    v = sorted(values)
    return v[int(0.1 * (len(v) - 1))], v[int(0.9 * (len(v) - 1))]


def profile_joint(cfg: dict, top: int = 10) -> list[dict]:
    """Self-CPU time of the heaviest ops in a few joint training steps (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    stepper = Stepper("joint", cfg)
    clip, labels = _batch(cfg, 0, "cpu")
    for _ in range(2):
        stepper.step(clip, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            stepper.step(clip, labels)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 5e3, 2), "calls_per_step": e.count // 5}
            for e in rows]


def cuda_part(reps: int, warmup: int, batch: int) -> dict | str:
    if not torch.cuda.is_available():
        return "skipped: no CUDA"
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cfg = {"arch": "resnext101", "kernel_size": 5, "dmr_dim": 512, "ar_dim": 512, "head_channels": 64,
           "dropout": 0.5, "clip_len": 16, "crop_size": 112, "batch_size": batch, "num_classes": 400,
           "alpha": 0.1, "beta": 1.0, "delta": 0.01}
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
    for key in ("arch", "clip_len", "crop_size", "batch_size"):
        p.add_argument(f"--{key.replace('_', '-')}", type=str if key == "arch" else int, default=None,
                       help=f"override the recipe's {key} (the target is defined for the recipe's values)")
    args = p.parse_args(argv)
    cfg = load_recipe(Path(args.recipe))
    overrides = {k: getattr(args, k) for k in ("arch", "clip_len", "crop_size", "batch_size")
                 if getattr(args, k) is not None}
    cfg.update(overrides)
    results, targets = {}, []
    for n in args.threads:
        torch.set_num_threads(n)
        results[f"threads_{n}"] = r = compare(cfg, args.reps, args.warmup)
        targets.append({"name": f"cpu, {n} thread(s): joint / backbone step time <= 1.15", "value": r["ratio"],
                        "target": 1.15, "pass": r["ratio"] <= 1.15})
    out = {"config": {**cfg, "recipe": str(Path(args.recipe).relative_to(ROOT)) if args.recipe.startswith(str(ROOT))
                      else args.recipe, "overrides": overrides, "reps": args.reps, "warmup": args.warmup,
                      "torch": torch.__version__},
           "cpu": results}
    if args.profile:
        torch.set_num_threads(1)
        out["profile_joint_1thread"] = profile_joint(cfg)
    out["cuda"] = cuda = cuda_part(args.reps, args.warmup, args.cuda_batch)
    if isinstance(cuda, dict):
        targets.append({"name": "cuda resnext101 AMP+channels_last_3d: joint / backbone (reported)",
                        "value": cuda["ratio"], "target": None, "pass": True})
    out["targets"] = targets
    out["all_pass"] = all(t["pass"] for t in targets)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
