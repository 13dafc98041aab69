"""Metrics: SSIM/PSNR identities, video-level averaging of clip scores, confusion matrix; and what
evaluate.py reads from a checkpoint (clips scored, output folder, S3 endpoint)."""

import math

import pytest
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

    run = _saved_run(tmp_path, "data.val_split=test")  # as the ucf101/hmdb51 recipes
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
def test_evaluate_and_predict_take_an_s3_endpoint(script):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, f"pipelines/{script}", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--s3-endpoint URL" in p.stdout
