"""DynamoNet models: every registered architecture at tiny width, in every mode (paper §3, §4.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynamonet.config import load_config
from dynamonet.losses import compute_losses
from dynamonet.models import (
    MODES,
    DynamoOutput,
    apply_dynamic_filters,
    build_model,
    build_model_from_config,
    list_models,
)

ROOT = Path(__file__).resolve().parents[1]
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
    cfg = load_config(str(ROOT / "pipelines" / "recipes" / "embedded.yaml"))
    model = build_model_from_config(cfg, 13)
    d = cfg.data
    x = torch.rand(2, 3, d.clip_len, d.crop_size, d.crop_size)
    out = model(x)
    assert out.logits.shape == (2, 13) and out.pred.shape == x.shape
    assert model.backbone.stem_pool is cfg.model.stem_pool


@pytest.mark.parametrize("name", ["r3d_tiny", "stc_resnext_tiny"])
def test_stem_pool_off_doubles_the_feature_maps_same_parameters(name: str) -> None:
    pooled = build_model(name, mode="joint", num_classes=5, clip_len=8, dmr_dim=16, ar_dim=16, head_channels=8)
    full = build_model(name, mode="joint", num_classes=5, clip_len=8, dmr_dim=16, ar_dim=16, head_channels=8,
                       stem_pool=False)
    x = torch.rand(2, 3, 8, 32, 32)
    assert tuple(pooled.backbone(x).shape[2:]) == (1, 1, 1)  # (⌈8/16⌉, ⌈32/32⌉, ⌈32/32⌉)
    assert tuple(full.backbone(x).shape[2:]) == (1, 2, 2)  # (⌈8/8⌉, ⌈32/16⌉, ⌈32/16⌉)
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    # the max-pool has no parameters; only the STC temporal sizes may follow the longer stage durations
    same = {k for k, v in pooled.state_dict().items() if shapes.get(k) == v.shape}
    assert set(pooled.state_dict()) == set(shapes)
    if name == "r3d_tiny":
        assert same == set(shapes)
    out = full(x)
    assert out.logits.shape == (2, 5) and out.pred.shape == x.shape


def _per_branch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A joint state dict in the per-branch layout (``motion.convs.*``, ``appearance.convs.*``)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("branch_convs."):
            out[key] = value
            continue
        suffix = key[len("branch_convs."):]
        rows = value.shape[0] // 2 if value.dim() else 0
        for k, branch in enumerate(("motion", "appearance")):
            out[f"{branch}.convs.{suffix}"] = value[k * rows : (k + 1) * rows].clone() if rows else value.clone()
    return out


def test_merged_branch_convs_equal_two_separate_pairs() -> None:
    """joint/no_fp run the motion and AR conv layers as one conv_pair(branches=2): same function."""
    from dynamonet.models.motion import conv_pair

    model = tiny("r3d_tiny", "joint")
    merged = model.branch_convs
    c_in, width, kt = merged[0].in_channels, merged[0].out_channels // 2, merged[0].kernel_size[0]
    pairs = [conv_pair(c_in, width, kt), conv_pair(c_in, width, kt)]
    legacy = _per_branch({f"branch_convs.{k}": v for k, v in merged.state_dict().items()})
    for branch, pair in zip(("motion", "appearance"), pairs, strict=True):
        pair.load_state_dict({k[len(branch) + len(".convs."):]: v for k, v in legacy.items() if k.startswith(branch)})
    feats = torch.randn(3, c_in, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for train in (True, False):
        merged.train(train)
        for p in pairs:
            p.train(train)
        torch.testing.assert_close(merged(feats), torch.cat([p(feats) for p in pairs], dim=1))
    for k, p in enumerate(pairs):  # the running statistics moved identically
        torch.testing.assert_close(merged[1].running_mean[k * width : (k + 1) * width], p[1].running_mean)
        torch.testing.assert_close(merged[4].running_var[k * width : (k + 1) * width], p[4].running_var)


def test_per_branch_checkpoints_still_load() -> None:
    src = tiny("r3d_tiny", "joint").eval()
    dst = build_model("r3d_tiny", mode="joint", num_classes=CLASSES, clip_len=T, kernel_size=5, dmr_dim=16, ar_dim=8,
                      head_channels=8, widths=(8, 8, 16, 16)).eval()
    dst.load_state_dict(_per_branch(src.state_dict()))  # strict: a checkpoint saved before the merge
    x = clip()[:, :, :T]
    with torch.no_grad():
        for a, b in zip(src(x), dst(x), strict=True):
            torch.testing.assert_close(a, b)


# --- STC block (Diba et al., ECCV 2018, §3.1; docs/model.md "STC block") -------------------------


def _stc_formula(c: int, t: int, r: int) -> int:
    """Parameters of one STC block by the paper's sizes (weights + biases, ≥ 4 hidden units).

    TCB: W1 C/r × C, W2 C × C/r. SCB: W1 (T·C)/r × T·C, W2 C × (T·C)/r.
    """
    hg, ht = max(4, c // r), max(4, t * c // r)
    return (c * hg + hg + hg * c + c) + (t * c * ht + ht + ht * c + c)


@pytest.mark.parametrize(("c", "t", "r"), [(32, 4, 16), (64, 2, 16), (16, 1, 4), (256, 8, 16), (8, 3, 16)])
def test_stc_block_keeps_the_shape_and_has_the_papers_parameter_count(c: int, t: int, r: int) -> None:
    from dynamonet.models.stc import STCBlock

    block = STCBlock(c, t, r)
    assert sum(p.numel() for p in block.parameters()) == _stc_formula(c, t, r)
    x = torch.randn(2, c, t, 3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert block(x).shape == x.shape
        assert block(x[:, :, : max(1, t - 1)]).shape[2] == max(1, t - 1)  # another clip length still runs


def test_stc_parameters_of_a_backbone_are_the_papers_and_grow_with_t_squared() -> None:
    """Every STC block of stc_resnext_tiny counts as the formula at its stage's (C, T): the paper's
    SCB makes the total quadratic in clip_len (docs/model.md gives the ResNeXt-101 numbers)."""
    from dynamonet.models.backbones import stage_durations

    totals = {}
    for clip_len in (16, 32, 64):
        with torch.device("meta"):
            model = build_model("stc_resnext_tiny", mode="backbone", num_classes=5, clip_len=clip_len)
        stc = sum(p.numel() for k, p in model.named_parameters() if ".stc." in k)
        widths, durations = (16, 32, 64, 128), stage_durations(clip_len)
        assert stc == sum(_stc_formula(2 * w, t, 16) for w, t in zip(widths, durations, strict=True))  # 1 block/stage
        totals[clip_len] = stc
    d32, d64 = totals[32] - totals[16], totals[64] - totals[16]
    assert d64 > 4 * d32  # more than linear: the (T·C)²/r term of the SCB's first FC


def test_stc_gates_as_documented() -> None:
    from dynamonet.models.stc import STCBlock

    block = STCBlock(16, 4, 4)
    x = torch.randn(2, 16, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        torch.testing.assert_close(block(x), 0.5 * x)  # σ(0) = 1/2 in both branches, averaged
        block.scb[2].bias.fill_(30.0)  # paper's TCB fully open, SCB closed: (1 + 0) / 2
        block.tcb[2].bias.fill_(-30.0)
        torch.testing.assert_close(block(x), 0.5 * x)
        block.tcb[2].bias.fill_(30.0)  # both open: identity
        torch.testing.assert_close(block(x), x)
        # pooling per branch: the TCB sees only the space-time mean (blind to frame order), the SCB
        # keeps time (sees it); neither sees where in the frame a value is
        torch.manual_seed(0)
        for p in block.parameters():
            torch.nn.init.normal_(p)
        s_tcb, s_scb = block.gates(x)
        t_tcb, t_scb = block.gates(x.flip(2))
        torch.testing.assert_close(t_tcb, s_tcb)
        assert not torch.allclose(t_scb, s_scb)
        for a, b in zip(block.gates(x.flip(3).flip(4)), (s_tcb, s_scb), strict=True):
            torch.testing.assert_close(a, b)


def test_init_from_another_clip_length_reinitialises_only_the_papers_scb() -> None:
    """The paper's SCB FC is sized by the stage's T, so between clip lengths exactly those tensors
    (``stc.tcb``, in stages whose T differs) are skipped; the rest of every STC block loads."""
    from dynamonet.models import load_matching_weights
    from dynamonet.models.backbones import stage_durations

    kw = {"mode": "backbone", "num_classes": 5}
    src = build_model("stc_resnext_tiny", clip_len=8, **kw)
    dst = build_model("stc_resnext_tiny", clip_len=16, **kw)
    report = load_matching_weights(dst, src.state_dict())
    changed = [i for i, (a, b) in enumerate(zip(stage_durations(8), stage_durations(16), strict=True)) if a != b]
    assert changed == [0, 1, 2]  # [4, 2, 1, 1] vs [8, 4, 2, 1]
    expected = {f"backbone.stages.{i}.0.stc.tcb.{name}" for i in changed
                for name in ("0.weight", "0.bias", "2.weight")}  # tcb.2.bias is (C,): it loads
    assert {name for name, _, _ in report.shape_mismatch} == expected
    assert not report.missing and not report.unexpected
    assert any(".stc.scb." in name for name in report.loaded) and "backbone.stages.3.0.stc.tcb.0.weight" in report.loaded
