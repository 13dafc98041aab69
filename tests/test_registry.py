"""Registry, argument validation, reference sizes, partial weight loading and the summary CLI."""

from __future__ import annotations

import json

import pytest
import torch

from dynamonet.config import MODES as CONFIG_MODES
from dynamonet.models import MODES, LoadReport, build_model, list_models, load_matching_weights
from dynamonet.models.summary import main as summary_main
from dynamonet.models.summary import summarize

REQUIRED = ["r3d10", "r3d18", "r3d34", "r3d50", "r3d101", "r3d152", "resnext50", "resnext101", "resnext152",
            "stc_resnext50", "stc_resnext101", "stc_resnext152", "r3d_tiny", "resnext_tiny", "stc_resnext_tiny"]


def test_registry_lists_the_required_models() -> None:
    assert set(REQUIRED) <= set(list_models())
    assert MODES == CONFIG_MODES == ("pretrain", "joint", "no_fp", "backbone")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "r3d_nope"}, "name"),
        ({"mode": "finetune"}, "mode"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"kernel_size": 9}, "kernel_size"),
        ({"kernel_size": 1}, "kernel_size"),
        ({"clip_len": 1}, "clip_len"),
        ({"num_classes": 0}, "num_classes"),
        ({"shortcut": "C"}, "shortcut"),
        ({"widths": (8, 8, 8)}, "widths"),
        ({"dropout": 1.0}, "dropout"),
        ({"dmr_dim": 0}, "dmr_dim"),
        ({"bogus": 3}, "bogus"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs: dict, key: str) -> None:
    kwargs = {"name": "r3d_tiny", **kwargs}
    with pytest.raises(ValueError, match=rf"^{key}: "):
        build_model(kwargs.pop("name"), **kwargs)


def test_kernel_size_message() -> None:
    with pytest.raises(ValueError, match=r"kernel_size: must be an integer in 3\.\.7, got 8"):
        build_model("r3d_tiny", kernel_size=8)
    for s in (3, 4, 5, 6, 7):  # §3.1 tried every size from 3 to 7
        assert build_model("r3d_tiny", kernel_size=s).kernel_size == s


def test_cardinality_must_divide_widths() -> None:
    with pytest.raises(ValueError, match="^cardinality: "):
        build_model("resnext101", widths=(8, 8, 16, 16))  # cardinality 32 at tiny width


def test_none_and_empty_arguments_mean_default() -> None:
    a = build_model("r3d_tiny", clip_len=None, kernel_size=None, dmr_dim=None, shortcut="", widths=[], layers=None)
    b = build_model("r3d_tiny")
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert a.clip_len == 16 and a.kernel_size == 5


def _params(name: str, **kw: object) -> int:
    with torch.device("meta"):  # no allocation, no forward pass
        model = build_model(name, mode="backbone", num_classes=400, **kw)
    return sum(p.numel() for p in model.parameters())


# Reference sizes computed here from the architecture of Hara et al. (3D-ResNets-PyTorch), independently of
# dynamonet.models: a 7x7x7 stem conv (stride 1,2,2, pad 3) + BN, a 3x3x3 max-pool (stride 2), four stages whose
# first block strides 2 from stage 2 on, a global average pool and an FC layer with bias. Every conv is bias-free
# and followed by a BN (weight + bias). Shortcut A is parameter-free; B is a 1x1x1 conv + BN where the shape changes.
EXPANSION = {"basic": 1, "bottleneck": 4, "resnext": 2}


def _out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def _hara_reference(block: str, layers: tuple[int, ...], widths: tuple[int, ...], shortcut: str, cardinality: int = 1,
                    stem: int = 64, num_classes: int = 400, clip_len: int = 16, size: int = 112) -> tuple[int, int]:
    """``(parameters, forward FLOPs)`` of Hara's 3D ResNet/ResNeXt in backbone form, FLOPs = 2 per multiply-add
    of the convs and the FC layer for one ``(1, 3, clip_len, size, size)`` clip."""
    params, flops = 0, 0

    def conv(k: int, cin: int, cout: int, t: int, hw: int, groups: int = 1) -> None:
        nonlocal params, flops
        weights = k**3 * (cin // groups) * cout
        params += weights + 2 * cout  # the conv, then its BN
        flops += 2 * weights * t * hw * hw

    t, hw = clip_len, _out(size, 7, 2, 3)
    conv(7, 3, stem, t, hw)
    t, hw = _out(t, 3, 2, 1), _out(hw, 3, 2, 1)
    cin = stem
    for stage, (blocks, planes) in enumerate(zip(layers, widths, strict=True)):
        cout = planes * EXPANSION[block]
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            t2, hw2 = _out(t, 3, stride, 1), _out(hw, 3, stride, 1)
            if block == "basic":
                conv(3, cin, planes, t2, hw2)
                conv(3, planes, planes, t2, hw2)
            else:
                conv(1, cin, planes, t, hw)
                conv(3, planes, planes, t2, hw2, groups=cardinality)
                conv(1, planes, cout, t2, hw2)
            if shortcut == "B" and (stride != 1 or cin != cout):
                conv(1, cin, cout, t2, hw2)
            t, hw, cin = t2, hw2, cout
    params += cin * num_classes + num_classes
    flops += 2 * cin * num_classes
    return params, flops


R3D18 = ("basic", (2, 2, 2, 2), (64, 128, 256, 512))
RESNEXT101 = ("resnext", (3, 4, 23, 3), (128, 256, 512, 1024))
# torchvision's published size of r3d_18 (R3D_18_Weights.KINETICS400_V1 "num_params", 400 classes): type-B
# shortcuts, but a 3x7x7 stem where Hara's is 7x7x7, i.e. (7 - 3)*7*7*3*64 weights fewer.
TORCHVISION_R3D18_PARAMS = 33_371_472
TORCHVISION_STEM_DIFFERENCE = (7 - 3) * 7 * 7 * 3 * 64


@pytest.mark.parametrize(
    ("name", "shortcut", "reference"),
    [("resnext101", None, (*RESNEXT101, "B", 32)), ("r3d18", "A", (*R3D18, "A")), ("r3d18", "B", (*R3D18, "B")),
     ("r3d18", None, (*R3D18, "A"))],
)
def test_reference_parameter_counts(name: str, shortcut: str | None, reference: tuple) -> None:
    expected, _ = _hara_reference(*reference)
    assert _params(name, shortcut=shortcut) == expected


def test_reference_counts_agree_with_published_sizes() -> None:
    """The hand count reproduces the published sizes: torchvision's r3d_18 exactly (stem aside), and the
    0.01 M figures of Hara et al. quoted in docs/model.md."""
    a, b = _hara_reference(*R3D18, "A")[0], _hara_reference(*R3D18, "B")[0]
    assert b == TORCHVISION_R3D18_PARAMS + TORCHVISION_STEM_DIFFERENCE
    assert (round(a / 1e6, 2), round(b / 1e6, 2)) == (33.24, 33.41)
    assert round(_hara_reference(*RESNEXT101, "B", 32)[0] / 1e6, 2) == 48.34
    assert _params("r3d18", shortcut="B") == TORCHVISION_R3D18_PARAMS + TORCHVISION_STEM_DIFFERENCE


def test_resnext101_flops_on_meta() -> None:
    out = summarize("resnext101", num_classes=400, clip_len=16, size=112, mode="backbone")
    params, flops = _hara_reference(*RESNEXT101, "B", 32)
    assert out["params"] == params
    assert out["gflops"] == round(flops / 1e9, 3) and round(out["gflops"], 1) == 19.1


def test_summary_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert summary_main(["r3d18", "--num-classes", "400", "--clip-len", "16", "--size", "112", "--shortcut", "B"]) == 0
    out = json.loads(capsys.readouterr().out)
    params, flops = _hara_reference(*R3D18, "B")
    assert out["params"] == params and out["gflops"] == round(flops / 1e9, 3) and out["shortcut"] == "B"
    assert summary_main(["--list"]) == 0
    assert set(REQUIRED) <= set(json.loads(capsys.readouterr().out)["models"])
    assert summary_main(["r3d_tiny", "--mode", "joint", "--clip-len", "8", "--size", "40", "--num-classes", "13"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "joint"


def test_load_matching_weights_with_a_different_class_count() -> None:
    torch.manual_seed(0)
    src = build_model("r3d_tiny", num_classes=5, clip_len=4, dmr_dim=16, ar_dim=8)
    torch.manual_seed(1)
    dst = build_model("r3d_tiny", num_classes=7, clip_len=4, dmr_dim=16, ar_dim=8)
    fresh_head = dst.classifier.fc.weight.detach().clone()
    ddp_state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from a DDP wrapper
    report = load_matching_weights(dst, ddp_state)
    assert isinstance(report, LoadReport)
    assert sorted(report.reinitialized_head) == ["classifier.fc.bias", "classifier.fc.weight"]
    assert {n for n, _, _ in report.shape_mismatch} == {"classifier.fc.bias", "classifier.fc.weight"}
    assert report.unexpected == [] and report.missing == []
    assert len(report.loaded) == len(src.state_dict()) - 2
    torch.testing.assert_close(dst.backbone.stem[0].weight, src.backbone.stem[0].weight)
    torch.testing.assert_close(dst.classifier.fc.weight, fresh_head)  # left freshly initialised
    assert "re-initialised" in report.summary()


def test_load_matching_weights_across_modes() -> None:
    pre = build_model("r3d_tiny", mode="pretrain", clip_len=4)
    joint = build_model("r3d_tiny", mode="joint", clip_len=4, num_classes=3)
    fresh_ar = joint.branch_convs[0].weight[64:].detach().clone()
    report = load_matching_weights(joint, {"model": pre.state_dict()})  # a checkpoint dict
    assert report.unexpected == [] and report.shape_mismatch == []
    assert any(n.startswith("appearance.") for n in report.missing)
    assert all(n.startswith(("backbone.", "motion.")) for n in report.loaded)
    assert "motion.convs.0.weight" in report.loaded and "appearance.convs.0.weight" in report.missing
    # joint models run both branches' convs as one conv_pair: the motion rows come from pretraining
    torch.testing.assert_close(joint.branch_convs[0].weight[:64], pre.motion.convs[0].weight)
    torch.testing.assert_close(joint.branch_convs[4].running_var[:64], pre.motion.convs[4].running_var)
    torch.testing.assert_close(joint.branch_convs[0].weight[64:], fresh_ar)
    torch.manual_seed(1)
    back = load_matching_weights(build_model("r3d_tiny", mode="pretrain", clip_len=4), joint.state_dict())
    assert any(n.startswith("classifier.") for n in back.unexpected)
    assert "branch_convs.3.weight" in back.loaded and "unexpected" in back.summary()


def test_layer_changes_name_each_layer_once_with_the_reason() -> None:
    pre = build_model("r3d_tiny", mode="pretrain", clip_len=4)
    joint = build_model("r3d_tiny", mode="joint", clip_len=4, num_classes=3)
    assert load_matching_weights(build_model("r3d_tiny", mode="pretrain", clip_len=4),
                                 pre.state_dict()).layer_changes() == []
    up = load_matching_weights(joint, pre.state_dict()).layer_changes()
    assert up and all(line.startswith("re-initialised: ") and "not in the checkpoint" in line for line in up)
    layers = [line.split(": ")[1] for line in up]
    assert len(layers) == len(set(layers)) and "classifier.fc" in layers         # one line per layer
    assert any(name.startswith("appearance.") for name in layers)
    down = load_matching_weights(build_model("r3d_tiny", mode="pretrain", clip_len=4), joint.state_dict())
    assert "unused from the checkpoint: classifier.fc: weight, bias" in down.layer_changes()
