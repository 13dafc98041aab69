"""Metrics: SSIM/PSNR against scikit-image, video-level averaging of clip scores, confusion matrix; and what
evaluate.py reads from a checkpoint (clips scored, output folder, S3 endpoint)."""

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dynamonet.eval_metrics import (
    VideoScores,
    confusion_matrix,
    frames_to_images,
    per_class_accuracy,
    psnr,
    ssim,
    topk_correct,
)

ROOT = Path(__file__).resolve().parents[1]


def _smooth_image(channels: int, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    """A (1, C, H, W) image in [0, 1] with structure at several scales (noise smoothed by a 5x5 box)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, height, width, generator=g)
    return F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)


def _noise(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _shift(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, shifts=(1, 2), dims=(-2, -1))


def _brighter(x: torch.Tensor) -> torch.Tensor:
    return 0.8 * x + 0.15


DISTORTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": _noise, "blur": _blur, "shift": _shift, "brightness": _brighter}


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def _skimage_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """scikit-image's SSIM of one (C, H, W) image pair under the project's convention (Wang et al. 2004):
    11-tap Gaussian window of sigma 1.5, data range 1 (pixels in [0, 1]), population (not sample)
    covariances, K1 = 0.01 and K2 = 0.03, the channels scored separately and averaged."""
    return float(structural_similarity(_hwc(pred), _hwc(target), channel_axis=2, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def test_ssim_of_identical_images_is_one():
    a = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(a, a), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "colour"])
@pytest.mark.parametrize("distortion", sorted(DISTORTIONS))
def test_ssim_and_psnr_match_scikit_image(distortion: str, channels: int):
    """Against scikit-image's SSIM (Wang et al. 2004) and PSNR. skimage filters the whole image with reflected
    borders and then discards the (window - 1) / 2 border pixels before averaging, which leaves exactly the
    valid window positions the project averages over: no boundary difference, so the tolerance only covers
    float32 (ours) against float64 (skimage) arithmetic."""
    target = _smooth_image(channels)
    pred = DISTORTIONS[distortion](target)
    want_ssim = _skimage_ssim(pred[0], target[0])
    want_psnr = peak_signal_noise_ratio(target[0].double().numpy(), pred[0].double().numpy(), data_range=1.0)
    assert math.isfinite(want_ssim) and -1 < want_ssim < 0.99 and math.isfinite(want_psnr)
    assert ssim(pred, target).item() == pytest.approx(want_ssim, abs=1e-4)
    assert psnr(pred, target).item() == pytest.approx(want_psnr, abs=1e-3)


def test_ssim_and_psnr_are_per_image_on_a_batch_of_predicted_frames():
    """The engine scores (B, C, T, H, W) clips through frames_to_images: one score per colour frame."""
    target = torch.cat([_smooth_image(3, seed=s) for s in range(4)])           # 4 frames of one clip
    pred = torch.cat([DISTORTIONS[name](target[i:i + 1]) for i, name in enumerate(sorted(DISTORTIONS))])
    clip_pred = pred.transpose(0, 1).unsqueeze(0)                                 # (1, C, T, H, W)
    clip_target = target.transpose(0, 1).unsqueeze(0)
    images_pred, images_target = frames_to_images(clip_pred), frames_to_images(clip_target)
    torch.testing.assert_close(images_target, target)
    got_ssim, got_psnr = ssim(images_pred, images_target), psnr(images_pred, images_target)
    want_ssim = [_skimage_ssim(p, t) for p, t in zip(pred, target, strict=True)]
    want_psnr = [peak_signal_noise_ratio(t.double().numpy(), p.double().numpy(), data_range=1.0)
                 for p, t in zip(pred, target, strict=True)]
    assert got_ssim.tolist() == pytest.approx(want_ssim, abs=1e-4)
    assert got_psnr.tolist() == pytest.approx(want_psnr, abs=1e-3)


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


# evaluate.py: config of the checkpoint, output folder, S3 endpoint (no Ray needed)

def _saved_run(tmp_path, *overrides: str):
    from dynamonet.cli import recipe_path
    from dynamonet.config import load_config
    from dynamonet.models import build_model_from_config
    from dynamonet.train.checkpoint import save_checkpoint

    cfg = load_config(recipe_path("embedded"), ["data.max_eval_clips=10", *overrides])
    run = tmp_path / "run"
    save_checkpoint(str(run / "checkpoint_epoch0001"), model=build_model_from_config(cfg, 2), optimizer=None,
                    schedule=None, scaler=None, epoch=1, step=1, config=cfg.to_dict(), class_names=["a", "b"],
                    metrics={})
    return run


def test_evaluate_scores_every_clip_unless_set(tmp_path):
    from dynamonet.eval import eval_overrides, load_for_eval

    run = _saved_run(tmp_path)
    assert load_for_eval(str(run), eval_overrides([]))[0].data.max_eval_clips == 0
    assert load_for_eval(str(run), eval_overrides(["data.max_eval_clips=3"]))[0].data.max_eval_clips == 3
    with pytest.raises(ValueError, match="^--set: expected KEY=VALUE, got 'foo'$"):
        eval_overrides(["foo"])


def test_default_eval_folder_is_named_after_the_split_scored(tmp_path):
    from dynamonet.eval import default_out_dir, eval_split, load_for_eval

    run = _saved_run(tmp_path, "data.val_split=test")  # a config that validated on the test split
    cfg, _ = load_for_eval(str(run))
    assert default_out_dir(str(run), eval_split(cfg)) == str(run / "eval" / "test")
    assert default_out_dir(str(run / "checkpoint_epoch0001"), eval_split(cfg, "train")) == str(run / "eval" / "train")


def test_s3_checkpoint_is_read_through_the_given_endpoint(tmp_path, s3_server, s3_bucket, monkeypatch):
    from dynamonet.eval import load_for_eval

    run = _saved_run(tmp_path)
    key = "runs/r/checkpoint_epoch0001/checkpoint.pt"
    s3_server.client().upload_file(str(run / "checkpoint_epoch0001" / "checkpoint.pt"), s3_bucket[5:], key)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only --s3-endpoint says where the bucket is
    cfg, state = load_for_eval(f"{s3_bucket}/runs/r", endpoint=s3_server.endpoint)
    assert state["class_names"] == ["a", "b"] and state["epoch"] == 1


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_evaluate_and_predict_take_an_s3_endpoint(script, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / script), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--s3-endpoint URL" in p.stdout
