"""One epoch of training and one pass of validation (pure PyTorch; Ray-free, DDP-aware).

Paper §3.2 (joint loss α·FP + β·CE), §4.3 (training and video-level testing). Batches arrive as
dicts of tensors straight from ``iter_torch_batches`` — ``clip`` uint8 (B, T+1, H, W, 3) — and are
converted on the device:

    uint8 (B, T+1, H, W, 3) ──permute──► (B, 3, T+1, H, W) ──float/255──► frames in [0, 1]
        x      = frames[:, :, :T]     network input (frames 1..T)
        target = frames[:, :, 1:T+1]  frame-prediction targets (frames 2..T+1)

Rows whose ``status`` is not 0 (padding that equalises DDP ranks, or a corrupt video) get weight 0
in every loss and metric, so every rank runs the same number of steps and nothing is counted twice.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dynamonet.config import Config
from dynamonet.eval_metrics import VideoScores, confusion_matrix, frames_to_images, psnr, ssim, topk_correct
from dynamonet.losses import compute_losses

STATUS_OK, STATUS_PAD, STATUS_CORRUPT = 0, 1, 2


@dataclass
class Batch:
    x: torch.Tensor  # (B, 3, T, H, W) float in [0, 1]
    target: torch.Tensor  # (B, 3, T, H, W) frames 2..T+1
    labels: torch.Tensor  # (B,) int64, -1 = unlabeled
    weight: torch.Tensor  # (B,) 1.0 for real rows, 0.0 for padding / corrupt
    status: torch.Tensor  # (B,) uint8
    video_index: torch.Tensor  # (B,) int64


def fp_weight(cfg: Config) -> float:
    """α of the run: ``loss.alpha``, or 0 in ``no_fp`` (the §4.5 ablation keeps the filters and the DMR
    but trains without the frame-prediction loss; the FP term is still computed and reported)."""
    return 0.0 if cfg.model.mode == "no_fp" else cfg.loss.alpha


def prepare_batch(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False) -> Batch:
    """Move a uint8 batch to ``device`` and convert it there (see module docstring)."""
    clip = batch["clip"].to(device, non_blocking=True)  # (B, T+1, H, W, 3) uint8
    frames = clip.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T+1, H, W), channels_last_3d strides
    x, target = frames[:, :, :-1], frames[:, :, 1:]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    else:
        x, target = x.contiguous(), target.contiguous()
    status = batch["status"].to(device)
    return Batch(x=x, target=target, labels=batch["label"].to(device).long(),
                 weight=(status == STATUS_OK).float(), status=status,
                 video_index=batch["video_index"].to(device).long())


def emit(line: str) -> None:
    """One output line. Ray Train V2 patches ``print`` to tee into its logger (printing twice), so
    progress goes straight to the stream."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over DDP ranks (identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` with unbounded hours (``27:03:09``, not wrapped at a day); negatives are 0."""
    total = int(max(0.0, seconds) + 0.5) if math.isfinite(seconds) else 0
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class Progress:
    """Rank-0 progress lines with throughput and ETA for the whole run."""

    prefix: str
    epoch: int
    epochs: int
    steps_per_epoch: int
    log_every: int
    started: float = 0.0

    def line(self, step: int, clips: float, data_wait: float, extra: str) -> None:
        if _world()[0] != 0 or self.log_every <= 0 or (step % self.log_every and step != self.steps_per_epoch):
            return
        elapsed = time.perf_counter() - self.started
        per_step = elapsed / max(step, 1)
        remaining = (self.steps_per_epoch - step) + (self.epochs - self.epoch - 1) * self.steps_per_epoch
        eta = format_duration(remaining * per_step)
        emit(f"[{self.prefix}] epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch} "
             f"{extra} {clips / max(elapsed, 1e-9):.1f} clips/s data-wait {100 * data_wait / max(elapsed, 1e-9):.0f}% "
             f"eta {eta}")


def train_one_epoch(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    schedule: Any, scaler: torch.amp.GradScaler, cfg: Config, device: torch.device,
                    progress: Progress, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Train over one epoch of batches; returns metrics averaged over valid clips on all ranks."""
    model.train()
    sums = [0.0] * 7  # loss, fp, ce, n_valid, correct, n_corrupt, n_rows
    data_wait, steps = 0.0, 0
    progress.started = t0 = time.perf_counter()
    it = iter(batches)
    while True:
        t_wait = time.perf_counter()
        try:
            raw = next(it)
        except StopIteration:
            break
        data_wait += time.perf_counter() - t_wait
        b = prepare_batch(raw, device, cfg.train.channels_last and device.type == "cuda")
        with autocast_context(device, amp_dtype):
            out = model(b.x)
        out = type(out)(*(t.float() if t is not None else None for t in out))
        terms = compute_losses(out, b.target, b.labels, alpha=fp_weight(cfg), beta=cfg.loss.beta,
                               delta=cfg.loss.huber_delta, weight=b.weight,
                               fp_reduction=cfg.loss.fp_reduction)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        steps += 1
        n = float(b.weight.sum())
        correct = 0.0
        if out.logits is not None:
            correct = float((topk_correct(out.logits.detach(), b.labels, 1).float() * b.weight).sum())
        vals = [terms.total.item() * n, terms.fp.item() * n, terms.ce.item() * n, n, correct,
                float((b.status == STATUS_CORRUPT).sum()), float(len(b.labels))]
        sums = [s + v for s, v in zip(sums, vals, strict=True)]
        progress.line(steps, sums[6], data_wait,
                      f"loss {terms.total.item():.4f} (fp {terms.fp.item():.5f} ce {terms.ce.item():.4f}) "
                      f"lr {optimizer.param_groups[0]['lr']:.4g}")
    elapsed = time.perf_counter() - t0
    tot = all_reduce_sum(sums + [float(steps), data_wait, elapsed], device)
    n = max(tot[3], 1.0)
    world = _world()[1]
    return {"train/loss": tot[0] / n, "train/loss_fp": tot[1] / n, "train/loss_ce": tot[2] / n,
            "train/top1": tot[4] / n if model_has_classifier(model) else math.nan,
            "train/clips": tot[3], "data/corrupt_clips": tot[5],
            "perf/clips_per_s": tot[6] / max(tot[9] / world, 1e-9),
            "perf/data_wait_s_per_step": tot[8] / max(tot[7], 1.0),
            "perf/steps": tot[7] / world, "lr": optimizer.param_groups[0]["lr"]}


def model_has_classifier(model: nn.Module) -> bool:
    inner = getattr(model, "module", model)
    return getattr(inner, "mode", "joint") != "pretrain"


@dataclass
class EvalResult:
    metrics: dict[str, float]
    video_scores: VideoScores | None
    confusion: torch.Tensor | None


@torch.no_grad()
def validate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], cfg: Config, device: torch.device,
             num_classes: int, amp_dtype: torch.dtype | None = None, prefix: str = "val") -> EvalResult:
    """Clip losses, video-level top-1/top-5 (mean of clip scores), SSIM/PSNR vs copy-last-frame."""
    model.eval()
    sums = [0.0] * 12  # loss fp ce n c1 c5 ssim psnr copy_ssim copy_psnr n_frames n_corrupt
    scores = VideoScores(num_classes) if model_has_classifier(model) else None
    for raw in batches:
        b = prepare_batch(raw, device, cfg.train.channels_last and device.type == "cuda")
        with autocast_context(device, amp_dtype):
            out = model(b.x)
        out = type(out)(*(t.float() if t is not None else None for t in out))
        terms = compute_losses(out, b.target, b.labels, alpha=fp_weight(cfg), beta=cfg.loss.beta,
                               delta=cfg.loss.huber_delta, weight=b.weight,
                               fp_reduction=cfg.loss.fp_reduction)
        n = float(b.weight.sum())
        valid = b.weight > 0
        vals = [terms.total.item() * n, terms.fp.item() * n, terms.ce.item() * n, n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, float((b.status == STATUS_CORRUPT).sum())]
        if out.logits is not None and valid.any():
            lg, lb = out.logits[valid], b.labels[valid]
            vals[4] = float(topk_correct(lg, lb, 1).sum())
            vals[5] = float(topk_correct(lg, lb, 5).sum())
            scores.add(b.video_index[valid], F.softmax(lg, dim=1), lb)
        if out.pred is not None and valid.any():
            pred = frames_to_images(out.pred[valid].clamp(0, 1))
            tgt = frames_to_images(b.target[valid])
            last = frames_to_images(b.x[valid])
            vals[6], vals[7] = float(ssim(pred, tgt).sum()), float(psnr(pred, tgt).sum())
            vals[8], vals[9] = float(ssim(last, tgt).sum()), float(psnr(last, tgt).sum())
            vals[10] = float(len(tgt))
        sums = [s + v for s, v in zip(sums, vals, strict=True)]
    tot = all_reduce_sum(sums, device)
    n, nf = max(tot[3], 1.0), max(tot[10], 1.0)
    m = {f"{prefix}/loss": tot[0] / n, f"{prefix}/loss_fp": tot[1] / n, f"{prefix}/loss_ce": tot[2] / n,
         f"{prefix}/clips": tot[3], f"{prefix}/corrupt_clips": tot[11]}
    if tot[10] > 0:
        m.update({f"{prefix}/fp_ssim": tot[6] / nf, f"{prefix}/fp_psnr": tot[7] / nf,
                  f"{prefix}/copy_last_ssim": tot[8] / nf, f"{prefix}/copy_last_psnr": tot[9] / nf})
    cm = None
    if scores is not None:
        scores = gather_video_scores(scores)
        vm = scores.metrics()
        m.update({f"{prefix}/clip_top1": tot[4] / n, f"{prefix}/clip_top5": tot[5] / n,
                  f"{prefix}/top1": vm["top1"], f"{prefix}/top5": vm["top5"], f"{prefix}/videos": vm["num_videos"]})
        _, vscores, vlabels = scores.mean_scores()
        if len(vlabels):
            cm = confusion_matrix(vscores.argmax(1), vlabels, num_classes)
    return EvalResult(metrics=m, video_scores=scores, confusion=cm)


def gather_video_scores(scores: VideoScores) -> VideoScores:
    """Merge the per-rank accumulators (a video's clips may be spread over ranks)."""
    if _world()[1] == 1:
        return scores
    states: list[Any] = [None] * _world()[1]
    dist.all_gather_object(states, scores.to_state())
    merged = VideoScores(scores.num_classes)
    for s in states:
        merged.merge(VideoScores.from_state(scores.num_classes, s))
    return merged
