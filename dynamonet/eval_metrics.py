"""Evaluation metrics (pure PyTorch, no Ray): paper §4.3 testing protocol and §4.6 / Tab. 3.

* Video-level accuracy: every non-overlapping clip of a video is scored (centre crop) and the
  softmax scores are averaged over the clips of the video (§4.3 "Testing").
* Frame prediction quality: SSIM (Wang et al. 2004, 11×11 Gaussian window, σ = 1.5, on [0, 1]
  pixels, averaged over channels) and PSNR of the predicted frames, next to the copy-last-frame
  baseline x̂(t+1) = x(t) that any motion model must beat (Tab. 3 reports SSIM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    w2d = g[:, None] * g[None, :]  # (size, size)
    return w2d.expand(channels, 1, size, size).contiguous()  # (C, 1, size, size)


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1].

    Args:
        pred: (N, C, H, W) predicted images.
        target: (N, C, H, W) reference images.
        window: Gaussian window size (shrunk to the image size for tiny images).
        sigma: Gaussian standard deviation.

    Returns:
        (N,) SSIM per image (mean over the valid window positions and the channels).
    """
    pred, target = pred.float(), target.float()
    c = pred.shape[1]
    window = min(window, pred.shape[-1], pred.shape[-2])
    w = _gaussian_window(window, sigma, c, pred.device, pred.dtype)
    c1, c2 = 0.01**2, 0.03**2
    mu_x = F.conv2d(pred, w, groups=c)
    mu_y = F.conv2d(target, w, groups=c)
    sxx = F.conv2d(pred * pred, w, groups=c) - mu_x**2
    syy = F.conv2d(target * target, w, groups=c) - mu_y**2
    sxy = F.conv2d(pred * target, w, groups=c) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR in dB of (N, C, H, W) images in [0, 1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


def frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) → (B·T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) bool: label among the top-k scores."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


@dataclass
class VideoScores:
    """Accumulates clip scores per video for video-level accuracy (paper §4.3).

    ``add`` takes per-clip probabilities; ``merge`` combines accumulators from DDP ranks.
    """

    num_classes: int
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)

    def add(self, video_index: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add (B,) video ids, (B, K) probabilities and (B,) labels (valid clips only)."""
        for v, p, y in zip(video_index.tolist(), probs.detach().float().cpu(), labels.tolist(), strict=True):
            if v in self.sums:
                self.sums[v] += p
                self.counts[v] += 1
            else:
                self.sums[v], self.counts[v], self.labels[v] = p.clone(), 1, int(y)

    def merge(self, other: VideoScores) -> None:
        for v, s in other.sums.items():
            if v in self.sums:
                self.sums[v] += s
                self.counts[v] += other.counts[v]
            else:
                self.sums[v], self.counts[v], self.labels[v] = s.clone(), other.counts[v], other.labels[v]

    def to_state(self) -> dict:
        """A picklable form for ``all_gather_object``."""
        ids = sorted(self.sums)
        return {"ids": ids, "sums": torch.stack([self.sums[i] for i in ids]) if ids else torch.zeros(0, self.num_classes),
                "counts": [self.counts[i] for i in ids], "labels": [self.labels[i] for i in ids]}

    @classmethod
    def from_state(cls, num_classes: int, state: dict) -> VideoScores:
        vs = cls(num_classes)
        for i, v in enumerate(state["ids"]):
            vs.sums[v], vs.counts[v], vs.labels[v] = state["sums"][i], state["counts"][i], state["labels"][i]
        return vs

    def mean_scores(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """``(video_ids, (V, K) mean scores, (V,) labels)``."""
        ids = sorted(self.sums)
        if not ids:
            return [], torch.zeros(0, self.num_classes), torch.zeros(0, dtype=torch.long)
        scores = torch.stack([self.sums[i] / self.counts[i] for i in ids])
        return ids, scores, torch.tensor([self.labels[i] for i in ids])

    def metrics(self) -> dict[str, float]:
        """Video-level top-1 / top-5 and the number of videos."""
        _, scores, labels = self.mean_scores()
        if len(labels) == 0:
            return {"top1": float("nan"), "top5": float("nan"), "num_videos": 0}
        return {"top1": topk_correct(scores, labels, 1).float().mean().item(),
                "top5": topk_correct(scores, labels, 5).float().mean().item(),
                "num_videos": len(labels)}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows = true class, columns = predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """(K,) recall per class from a confusion matrix (NaN for classes with no sample)."""
    totals = cm.sum(1).float()
    return torch.where(totals > 0, cm.diag().float() / totals.clamp(min=1), torch.full_like(totals, float("nan")))
