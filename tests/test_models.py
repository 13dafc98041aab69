"""DynamoNet models: every registered architecture at tiny width, in every mode (paper §3, §4.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynamonet.losses import compute_losses
from dynamonet.models import MODES, DynamoOutput, apply_dynamic_filters, build_model, list_models

T, SIZE, CLASSES = 4, 32, 5


def tiny(name: str, mode: str, **kw: object) -> torch.nn.Module:
    """A registered architecture at tiny width (ResNeXt/STC with cardinality 4)."""
    extra = {"cardinality": 4} if "resnext" in name else {}
    torch.manual_seed(0)
    return build_model(name, mode=mode, num_classes=CLASSES, clip_len=T, kernel_size=5, dmr_dim=16, ar_dim=8,
                       head_channels=8, widths=(8, 8, 16, 16), **extra, **kw)


def clip(batch: int = 2, frames: int = T + 1) -> torch.Tensor:
    return torch.rand(batch, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
@torch.no_grad()
def test_shapes_every_model_every_mode(name: str) -> None:
    x = clip()[:, :, :T]
    for mode in MODES:
        out = tiny(name, mode).eval()(x)
        assert isinstance(out, DynamoOutput)
        assert (out.logits is None) == (mode == "pretrain")
        assert (out.pred is None) == (mode == "backbone")
        if out.logits is not None:
            assert out.logits.shape == (2, CLASSES)
        if out.pred is not None:
            assert out.pred.shape == (2, 3, T, SIZE, SIZE)
            assert out.filters.shape == (2, T, 5, 5)
            torch.testing.assert_close(out.filters.sum(dim=(-1, -2)), torch.ones(2, T))


def _grads_ok(model: torch.nn.Module) -> None:
    x = clip()
    out = model(x[:, :, :T])
    terms = compute_losses(out, x[:, :, 1:], torch.tensor([1, 3]), alpha=0.1, beta=1.0)
    terms.total.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
    assert all(torch.isfinite(t).all() for t in out if t is not None)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient_joint(name: str) -> None:
    _grads_ok(tiny(name, "joint"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["r3d_tiny", "stc_resnext_tiny"])
def test_every_parameter_gets_a_gradient_all_modes(name: str, mode: str) -> None:
    _grads_ok(tiny(name, mode))


def test_no_fp_has_the_modules_of_joint() -> None:
    joint, no_fp = tiny("r3d_tiny", "joint"), tiny("r3d_tiny", "no_fp")
    assert list(joint.state_dict()) == list(no_fp.state_dict())


def test_prediction_uses_raw_frames_and_frame_t_predicts_t_plus_1() -> None:
    model = tiny("r3d_tiny", "pretrain").eval()
    x = clip()[:, :, :T]
    out = model(x)
    torch.testing.assert_close(out.pred, apply_dynamic_filters(x, out.filters))
    assert 0.0 <= out.pred.min().item() and out.pred.max().item() <= 1.0  # convex combinations of [0,1] pixels
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()  # constants, not weights


def test_extract_features_and_head_names() -> None:
    model = tiny("r3d_tiny", "joint").eval()
    ar, dmr = model.extract_features(clip()[:, :, :T])
    assert ar.shape == (2, 8) and dmr.shape == (2, 16)
    assert model.head_parameter_names() == ["classifier.fc.weight", "classifier.fc.bias"]
    model.reset_classifier(11)
    assert model(clip()[:, :, :T]).logits.shape == (2, 11)
    assert tiny("r3d_tiny", "pretrain").head_parameter_names() == []
    with pytest.raises(ValueError, match="mode"):
        tiny("r3d_tiny", "backbone").extract_features(clip()[:, :, :T])


def test_wrong_input_raises() -> None:
    model = tiny("r3d_tiny", "joint")
    with pytest.raises(ValueError, match="clip_len"):
        model(clip(frames=T + 1))
    with pytest.raises(ValueError, match="x"):
        model(torch.rand(2, 1, T, SIZE, SIZE))


def test_embedded_default_builds_from_recipe() -> None:
    yaml = pytest.importorskip("yaml")
    with open(Path(__file__).parents[1] / "pipelines/recipes/embedded.yaml", encoding="utf-8") as fh:
        recipe = yaml.safe_load(fh)
    m, d = recipe["model"], recipe["data"]
    model = build_model(m["arch"], mode=m["mode"], num_classes=13, clip_len=d["clip_len"],
                        kernel_size=m["kernel_size"], dmr_dim=m["dmr_dim"], ar_dim=m["ar_dim"],
                        head_channels=m["head_channels"], dropout=m["dropout"])
    x = torch.rand(2, 3, d["clip_len"], d["crop_size"], d["crop_size"])
    out = model(x)
    assert out.logits.shape == (2, 13) and out.pred.shape == x.shape
