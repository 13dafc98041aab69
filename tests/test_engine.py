"""The training engine without Ray: batch conversion, masking of padding/corrupt rows, one epoch
of learning, video-level validation, checkpoints readable with weights_only=True."""

from __future__ import annotations

import math

import pytest
import torch

from dynamonet.config import Config
from dynamonet.models import build_model
from dynamonet.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from dynamonet.train.engine import (
    STATUS_CORRUPT,
    STATUS_PAD,
    Progress,
    format_duration,
    prepare_batch,
    train_one_epoch,
    validate,
)
from dynamonet.train.optim import LRSchedule, build_optimizer

T, S, K = 4, 24, 3


def cfg() -> Config:
    return Config().override("data.clip_len", T).override("data.crop_size", S).override("data.resize_short", S) \
        .override("train.log_every", 0).override("model.arch", "r3d_tiny")


def moving_square_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Class 0: a square moving right; class 1: moving down; class 2: still. uint8 (n, T+1, S, S, 3)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=g)
    clip = torch.zeros(n, T + 1, S, S, 3, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        r0, c0 = torch.randint(2, 10, (2,), generator=g).tolist()
        for t in range(T + 1):
            r, c = r0 + (2 * t if y == 1 else 0), c0 + (2 * t if y == 0 else 0)
            clip[i, t, r:r + 6, c:c + 6] = 255
    return {"clip": clip, "label": labels, "status": torch.zeros(n, dtype=torch.uint8),
            "video_index": torch.arange(n) + 1000 * seed}


def test_prepare_batch_converts_on_device_and_masks():
    b = moving_square_batch(4, 0)
    b["status"] = torch.tensor([0, STATUS_PAD, STATUS_CORRUPT, 0], dtype=torch.uint8)
    out = prepare_batch(b, torch.device("cpu"))
    assert out.x.shape == (4, 3, T, S, S) and out.target.shape == (4, 3, T, S, S)
    assert out.x.dtype == torch.float32 and 0 <= out.x.min() and out.x.max() <= 1
    assert torch.equal(out.target[:, :, : T - 1], out.x[:, :, 1:])  # target t = input t+1
    assert out.weight.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_padding_and_corrupt_rows_do_not_change_the_loss():
    torch.manual_seed(0)
    model = build_model("r3d_tiny", num_classes=K, clip_len=T, dmr_dim=16, ar_dim=16, head_channels=8).eval()
    real = moving_square_batch(3, 1)
    padded = {k: torch.cat([v, v[:2]]) for k, v in real.items()}
    padded["status"][3:] = torch.tensor([STATUS_PAD, STATUS_CORRUPT], dtype=torch.uint8)
    padded["clip"][3:] = 0
    m1 = validate(model, [real], cfg(), torch.device("cpu"), K).metrics
    m2 = validate(model, [padded], cfg(), torch.device("cpu"), K).metrics
    assert m1["val/clips"] == m2["val/clips"] == 3 and m2["val/corrupt_clips"] == 1
    for key in ("val/loss", "val/loss_fp", "val/top1", "val/fp_ssim"):
        assert math.isclose(m1[key], m2[key], rel_tol=1e-5), key


def test_video_level_score_is_the_mean_over_clips():
    model = build_model("r3d_tiny", num_classes=K, clip_len=T, dmr_dim=16, ar_dim=16, head_channels=8).eval()
    b = moving_square_batch(6, 2)
    b["video_index"] = torch.tensor([7, 7, 7, 8, 8, 9])  # three videos of 3, 2 and 1 clips
    res = validate(model, [b], cfg(), torch.device("cpu"), K)
    assert res.metrics["val/videos"] == 3
    ids, scores, _ = res.video_scores.mean_scores()
    with torch.no_grad():
        probs = model(prepare_batch(b, torch.device("cpu")).x).logits.softmax(1)
    assert ids == [7, 8, 9] and torch.allclose(scores[0], probs[:3].mean(0), atol=1e-5)
    assert int(res.confusion.sum()) == 3


def test_one_epoch_learns_motion_direction():
    torch.manual_seed(0)
    c = cfg().override("loss.alpha", 0.1).override("optim.schedule", "cosine")  # as the recipes: settles BN stats
    model = build_model("r3d_tiny", num_classes=K, clip_len=T, dmr_dim=32, ar_dim=32, head_channels=16, dropout=0.0)
    opt = build_optimizer(model, c.optim, 16)
    sched = LRSchedule(opt, c.optim, 0.05, steps_per_epoch=40, epochs=1)
    batches = [moving_square_batch(16, s) for s in range(40)]
    first = validate(model, batches[:4], c, torch.device("cpu"), K).metrics["val/loss"]
    m = train_one_epoch(model, batches, opt, sched, torch.amp.GradScaler("cpu", enabled=False), c,
                        torch.device("cpu"), Progress("t", 0, 1, 40, 0))
    after = validate(model, [moving_square_batch(16, 100 + s) for s in range(4)], c, torch.device("cpu"), K).metrics
    assert m["train/clips"] == 640 and after["val/loss"] < 0.7 * first
    assert after["val/top1"] > 0.6


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = build_model("r3d_tiny", num_classes=K, clip_len=T)
    opt = build_optimizer(model, cfg().optim, 8)
    sched = LRSchedule(opt, cfg().optim, 0.1, 5, 2)
    d = tmp_path / "run" / "checkpoint_epoch0002"
    save_checkpoint(str(d), model=model, optimizer=opt, schedule=sched, scaler=None, epoch=2, step=10,
                    config=cfg().to_dict(), class_names=["a", "b", "c"], metrics={"val/top1": 0.5},
                    transcode={"short_side": 128})
    (tmp_path / "run" / "checkpoint_epoch0001").mkdir()
    assert resolve_checkpoint(str(tmp_path / "run")).endswith("checkpoint_epoch0002/checkpoint.pt")
    state = load_checkpoint(str(tmp_path / "run"))  # torch.load(weights_only=True) inside
    assert state["epoch"] == 2 and state["class_names"] == ["a", "b", "c"] and state["transcode"]["short_side"] == 128
    assert Config.from_dict(state["config"]) == cfg()
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)  # a foreign checkpoint: just a state dict
    assert set(load_checkpoint(str(bare))["model"]) == set(model.state_dict())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="run.init_from: .*junk.pt is not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="run.init_from: checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope"))


def test_no_fp_ablation_trains_without_the_fp_term():
    """§4.5 `no_fp`: filters and DMR are kept, α is 0 whatever loss.alpha says; FP is still reported."""
    batch = moving_square_batch(8, 0)
    for mode, alpha in (("joint", 0.1), ("no_fp", 0.0)):
        torch.manual_seed(0)
        c = cfg().override("model.mode", mode).override("loss.alpha", 0.1).override("loss.beta", 1.0)
        model = build_model("r3d_tiny", mode=mode, num_classes=K, clip_len=T, dmr_dim=32, ar_dim=32,
                            head_channels=16, dropout=0.0)
        m = validate(model, [batch], c, torch.device("cpu"), K).metrics
        assert m["val/loss_fp"] > 0
        assert m["val/loss"] == pytest.approx(alpha * m["val/loss_fp"] + m["val/loss_ce"], rel=1e-4)


@pytest.mark.parametrize("seconds,text", [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"),
                                          (86400 + 3 * 3600 + 9, "27:00:09"), (200 * 86400, "4800:00:00"),
                                          (-5, "0:00:00"), (math.inf, "0:00:00")])
def test_eta_hours_do_not_wrap_at_a_day(seconds, text):
    assert format_duration(seconds) == text


def test_done_line_marks_metrics_a_mode_does_not_have():
    from dynamonet.train.ray_train import final_line

    line = final_line({"run": "r", "wall_time_s": 12.34,
                       "metrics": {"epoch": 3, "val/top1": 0.5, "val/top5": 1.0}})  # backbone: no FP metrics
    assert line == "DONE run=r epochs=3 val_top1=0.5000 val_top5=1.0000 fp_ssim=n/a copy_last_ssim=n/a wall_time=12.3s"


def test_init_from_lists_every_layer_it_reinitialises_and_strict_refuses(tmp_path, capsys):
    from dynamonet.train.ray_train import init_weights

    torch.manual_seed(0)
    five = build_model("r3d_tiny", num_classes=5, clip_len=T)
    torch.save(five.state_dict(), tmp_path / "five.pt")
    run = cfg().override("run.init_from", str(tmp_path / "five.pt"))
    state = init_weights(run, K)                                    # K = 3 classes here: the classifier differs
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[init]")]
    assert out[0].startswith(f"[init] from {tmp_path / 'five.pt'}: loaded ")
    d = five.classifier.fc.weight.shape[1]
    assert out[1:] == [f"[init]   re-initialised (reshaped): classifier.fc: weight (5, {d}) in the checkpoint, "
                       f"({K}, {d}) here; bias (5,) in the checkpoint, ({K},) here"]
    torch.testing.assert_close(state["backbone.stem.0.weight"], five.state_dict()["backbone.stem.0.weight"])
    with pytest.raises(ValueError, match=r"run.init_strict: .*five.pt does not fit this model exactly \(1 layers\): "
                                         r"re-initialised \(reshaped\): classifier.fc"):
        init_weights(run.override("run.init_strict", "true"), K)
    exact = init_weights(run.override("run.init_strict", "true"), 5)   # an exact fit passes the strict check
    assert capsys.readouterr().out.count("[init]   ") == 0 and len(exact) == len(five.state_dict())
    # the re-initialised layers come from train.seed: the same in every run, another with another seed
    torch.manual_seed(123)  # the caller's global generator plays no part, and is left as it was
    again, after = init_weights(run, K), torch.rand(1)
    torch.testing.assert_close(again["classifier.fc.weight"], state["classifier.fc.weight"], rtol=0, atol=0)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)
    other = init_weights(run.override("train.seed", 1), K)
    assert not torch.equal(other["classifier.fc.weight"], state["classifier.fc.weight"])
