"""Config: recipe → flags → --set precedence, validation errors naming the field, round trips."""

import glob
import subprocess
import sys

import pytest

from dynamonet.cli import build_parser, config_from_args, recipe_path
from dynamonet.config import Config, load_config


def parse(argv, recipe="embedded"):
    return config_from_args(build_parser("t", recipe).parse_args(argv))


def test_every_recipe_loads_or_demands_its_dataset():
    for path in glob.glob("pipelines/recipes/*.yaml"):
        try:
            cfg = load_config(path)
        except ValueError as e:  # paper recipes need --data / --storage-path
            assert str(e).startswith(("data.root:", "run.storage_path:")), (path, e)
            cfg = load_config(path, ["data.root=s3://b/p", "run.storage_path=s3://b/runs"])
        assert cfg.recipe == path.split("/")[-1][:-5]


def test_precedence_recipe_then_flags_then_set():
    cfg = parse(["--epochs", "3", "--train.num_workers", "1", "--set", "train.epochs=5", "--lr", "0.5"])
    assert cfg.train.epochs == 5 and cfg.train.num_workers == 1 and cfg.optim.lr == 0.5
    assert cfg.model.arch == "r3d_tiny"  # from the embedded recipe
    assert parse(["--use-gpu", "--resume"]).train.use_gpu is True


def test_round_trip_through_dict():
    cfg = parse(["--set", "data.decode_resources={decode: 0.5}", "--set", "model.widths=[8,16,32,64]"])
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg and again.data.decode_resources == {"decode": 0.5}


@pytest.mark.parametrize("item,field", [
    ("model.kernel_size=4", "model.kernel_size"),
    ("model.mode=bogus", "model.mode"),
    ("data.clip_len=1", "data.clip_len"),
    ("train.epochs=two", "train.epochs"),
    ("model.colour=red", "model.colour"),
    ("nosuch.key=1", "nosuch"),
])
def test_bad_values_name_the_field(item, field):
    with pytest.raises(ValueError) as e:
        load_config(recipe_path("embedded"), [item])
    assert str(e.value).startswith(field), str(e.value)


def test_fingerprint_ignores_bookkeeping_but_not_hyperparameters():
    a = load_config(recipe_path("embedded"))
    assert a.fingerprint() == a.override("run.name", "x").override("train.epochs", 99).fingerprint()
    assert a.fingerprint() != a.override("loss.alpha", 0.5).fingerprint()


def test_cli_error_is_one_line_and_exit_2():
    p = subprocess.run([sys.executable, "pipelines/train_joint.py", "--kernel-size", "4"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: model.kernel_size: must be an odd integer in 3..7, got 4"


def test_help_documents_every_key():
    text = build_parser("t", "embedded").format_help()
    for key in ("--model.kernel_size", "--loss.alpha", "--data.clips_per_video", "--run.max_failures"):
        assert key in text
    assert "Huber threshold" in text
