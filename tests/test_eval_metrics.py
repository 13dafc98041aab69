"""Metrics: SSIM/PSNR identities, video-level averaging of clip scores, confusion matrix."""

import math

import torch

from dynamonet.eval_metrics import VideoScores, confusion_matrix, per_class_accuracy, psnr, ssim, topk_correct


def test_ssim_and_psnr_basic_identities():
    torch.manual_seed(0)
    a = torch.rand(3, 3, 32, 32)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-5)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert (ssim(noisy, a) < 0.95).all()
    mse = (noisy - a).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(noisy, a), -10 * torch.log10(mse), atol=1e-4)


def test_video_scores_average_clips_and_merge_across_ranks():
    # video 0: two clips voting for class 1 (weakly) and class 0 (strongly) -> mean picks 0
    a, b = VideoScores(3), VideoScores(3)
    a.add(torch.tensor([0]), torch.tensor([[0.1, 0.5, 0.4]]), torch.tensor([0]))
    b.add(torch.tensor([0, 1]), torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]), torch.tensor([0, 1]))
    a.merge(VideoScores.from_state(3, b.to_state()))
    ids, scores, labels = a.mean_scores()
    assert ids == [0, 1] and torch.allclose(scores[0], torch.tensor([0.5, 0.275, 0.225]))
    m = a.metrics()
    assert m["top1"] == 0.5 and m["num_videos"] == 2
    assert math.isclose(m["top5"], 1.0)


def test_topk_and_confusion():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([1, 2])
    assert topk_correct(logits, labels, 1).tolist() == [False, True]
    assert topk_correct(logits, labels, 2).tolist() == [True, True]
    cm = confusion_matrix(torch.tensor([0, 2, 2]), torch.tensor([1, 2, 2]), 3)
    assert cm.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 2]]
    acc = per_class_accuracy(cm)
    assert math.isnan(acc[0]) and acc[1] == 0 and acc[2] == 1
