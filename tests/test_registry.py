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
        ({"kernel_size": 4}, "kernel_size"),
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
    with pytest.raises(ValueError, match=r"kernel_size: must be odd in 3\.\.7, got 4"):
        build_model("r3d_tiny", kernel_size=4)


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


@pytest.mark.parametrize(
    ("name", "shortcut", "millions"),
    [("resnext101", None, 48.34), ("r3d18", "A", 33.24), ("r3d18", "B", 33.41), ("r3d18", None, 33.24)],
)
def test_reference_parameter_counts(name: str, shortcut: str | None, millions: float) -> None:
    assert abs(_params(name, shortcut=shortcut) / 1e6 - millions) <= 0.01 * millions


def test_resnext101_flops_on_meta() -> None:
    out = summarize("resnext101", num_classes=400, clip_len=16, size=112, mode="backbone")
    assert abs(out["params"] / 1e6 - 48.34) <= 0.4834
    assert abs(out["gflops"] - 19.1) <= 0.191


def test_summary_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert summary_main(["r3d18", "--num-classes", "400", "--clip-len", "16", "--size", "112", "--shortcut", "B"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["params"] / 1e6 - 33.41) <= 0.3341 and out["gflops"] > 0
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
