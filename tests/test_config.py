"""Config: recipe → flags → --set precedence, validation errors naming the field, round trips."""

import subprocess
import sys
from pathlib import Path

import pytest

from dynamonet.cli import build_parser, config_from_args, parse_config, recipe_path
from dynamonet.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"embedded", "embedded_pretrain", "pretrain", "kinetics400", "kinetics400_32f", "kinetics400_64f", "ucf101",
           "hmdb51", "subtle", "subtle_pretrain", "embedded_stfn"}


def parse(argv, recipe="embedded"):
    return config_from_args(build_parser("t", recipe).parse_args(argv))


def test_every_recipe_loads_or_demands_its_dataset():
    paths = sorted((ROOT / "pipelines" / "recipes").glob("*.yaml"))
    assert {p.stem for p in paths} >= RECIPES  # a glob from the wrong place would find nothing and pass
    for path in paths:
        try:
            cfg = load_config(str(path))
        except ValueError as e:  # paper recipes need --data / --storage-path
            assert str(e).startswith(("data.root:", "run.storage_path:")), (path, e)
            cfg = load_config(str(path), ["data.root=s3://b/p", "run.storage_path=s3://b/runs"])
        assert cfg.recipe == path.stem


@pytest.mark.parametrize("frames", [32, 64])
def test_long_clip_recipes_are_the_kinetics_recipe_at_another_clip_length(frames):
    """§4.1: clips of 16, 32 or 64 frames; only the length and what it costs in memory differ."""
    given = ["data.root=s3://b/k400", "run.storage_path=s3://b/runs"]
    base = load_config(str(ROOT / "pipelines" / "recipes" / "kinetics400.yaml"), given).to_dict()
    long = load_config(str(ROOT / "pipelines" / "recipes" / f"kinetics400_{frames}f.yaml"), given).to_dict()
    assert long["data"]["clip_len"] == frames and long["data"]["batch_size"] * frames == 16 * 8
    for d in (base, long):
        d.pop("recipe")
        for key in ("clip_len", "batch_size", "max_eval_clips"):
            d["data"].pop(key)
    assert long == base


def test_a_recipe_name_is_not_shadowed_by_a_directory_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "subtle").mkdir()  # e.g. `--config bench` run from the checkout, which has bench/
    monkeypatch.chdir(tmp_path)
    assert recipe_path("subtle") == str(ROOT / "pipelines" / "recipes" / "subtle.yaml")
    assert load_config(recipe_path("subtle")).data.synthetic.kind == "subtle"


def test_exponent_without_a_dot_is_a_number():
    assert Config().override("optim.min_lr", "1e-6").optim.min_lr == 1e-6  # YAML 1.1 reads it as a string
    with pytest.raises(ValueError, match="optim.min_lr: expected a number"):
        Config().override("optim.min_lr", "tiny")


def test_init_from_takes_the_seed():
    from dynamonet.train.ray_train import init_source

    cfg = Config().override("run.init_from", "s3://b/runs/pre-s{seed}").override("train.seed", "3")
    assert init_source(cfg) == "s3://b/runs/pre-s3"
    assert init_source(cfg.override("run.init_from", "runs/x")) == "runs/x"


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
    ("model.kernel_size=8", "model.kernel_size"),
    ("model.mode=bogus", "model.mode"),
    ("data.clip_len=1", "data.clip_len"),
    ("train.epochs=two", "train.epochs"),
    ("model.colour=red", "model.colour"),
    ("nosuch.key=1", "nosuch"),
    ("data.holdout_fraction=1.0", "data.holdout_fraction: must be in [0, 1)"),
    ("data.holdout_fraction=0.2", "data.holdout_fraction: the held-out videos are validated only with"),
    ("data.holdout_by=actor", "data.holdout_by: must be class or group"),
    ("data.holdout_seed=-1", "data.holdout_seed: must be >= 0"),
    ("data.val_split=holdout", "data.val_split: holdout needs data.holdout_fraction > 0"),
    ("data.train_split=holdout", "data.train_split: 'holdout' names the validation part"),
])
def test_bad_values_name_the_field(item, field):
    with pytest.raises(ValueError) as e:
        load_config(recipe_path("embedded"), [item])
    assert str(e.value).startswith(field), str(e.value)
    assert "\n" not in str(e.value)


def test_holdout_validation_settings():
    """data.val_split=holdout with a fraction; a fraction without validation (a pretraining run that must
    not see the held-out videos) is fine; the paper recipes validate on the held-out part, not on test."""
    cfg = load_config(recipe_path("embedded"), ["data.val_split=holdout", "data.holdout_fraction=0.2"])
    assert (cfg.data.val_split, cfg.data.holdout_fraction, cfg.data.holdout_by) == ("holdout", 0.2, "class")
    assert load_config(recipe_path("embedded"), ["data.val_split=", "data.holdout_fraction=0.2"]).data.val_split == ""
    assert cfg.fingerprint() != cfg.override("data.holdout_seed", 1).fingerprint()
    given = ["data.root=s3://b/p", "run.storage_path=s3://b/runs"]
    for recipe, by in (("ucf101", "group"), ("hmdb51", "class")):
        data = load_config(recipe_path(recipe), given).data
        assert (data.val_split, data.holdout_by) == ("holdout", by) and 0 < data.holdout_fraction < 1


def test_fingerprint_ignores_bookkeeping_but_not_hyperparameters():
    a = load_config(recipe_path("embedded"))
    assert a.fingerprint() == a.override("run.name", "x").override("train.epochs", 99).fingerprint()
    assert a.fingerprint() != a.override("loss.alpha", 0.5).fingerprint()


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train_joint.py"), "--kernel-size", "8"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: model.kernel_size: must be an integer in 3..7, got 8"


@pytest.mark.parametrize("item", ["foo", "=1"])
def test_set_without_key_value_is_one_line_exit_2(item, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(build_parser("t", "embedded"), ["--set", item])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --set: expected KEY=VALUE, got {item!r}"


def test_refused_dataset_leaves_no_run_behind(tmp_path):
    from dynamonet.train.ray_train import prepare_run, resolve_run, save_run_config

    storage = tmp_path / "runs"
    keys = [f"run.storage_path={storage}", "run.name=r"]
    with pytest.raises(ValueError, match="^data.root: "):
        prepare_run(load_config(recipe_path("embedded"), [*keys, f"data.root={tmp_path / 'missing'}"]))
    assert not storage.exists()  # no orphan run: --resume finds nothing, a corrected --data is a new run
    with pytest.raises(ValueError, match="^run.resume: no run to resume"):
        resolve_run(load_config(recipe_path("embedded"), [f"run.storage_path={storage}", "run.resume=true"]))
    cfg, _, run_uri = resolve_run(load_config(recipe_path("embedded"), [*keys, f"data.root={tmp_path / 'fixed'}"]))
    save_run_config(cfg, run_uri)  # what prepare_run does once the dataset checks passed
    with pytest.raises(ValueError, match=r"^run.name: run 'r' already exists with a different config \(loss.alpha"):
        resolve_run(cfg.override("loss.alpha", 0.5))  # a genuine resume still refuses a changed config
    # where the work runs and how long it trains may change on resume (a cluster, more epochs)...
    placed = cfg.override("data.decode_resources", {"decode": 1}).override("train.worker_resources", {"trainer": 1})
    assert resolve_run(placed.override("train.epochs", 30).override("data.decode_actors", 8))[0].run.name == "r"
    assert resolve_run(cfg.override("loss.alpha", 0.5).override("run.force", True))[0].loss.alpha == 0.5  # ...--force


def test_help_documents_every_key():
    text = build_parser("t", "embedded").format_help()
    for key in ("--model.kernel_size", "--loss.alpha", "--data.clips_per_video", "--run.max_failures"):
        assert key in text
    assert "Huber threshold" in text


def test_unsupported_url_scheme_is_an_error_not_a_local_path():
    from dynamonet.storage import resolve_filesystem

    with pytest.raises(ValueError, match=r"gs://b/runs: unsupported URL scheme gs://"):
        resolve_filesystem("gs://b/runs")
    fs, path = resolve_filesystem("file:///tmp/x")
    assert path == "/tmp/x"


def test_a_failed_run_is_one_line_preferring_the_data_stream_error():
    from dynamonet.train.ray_train import _root_cause

    snippets = ("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n"
                '  File "worker.py", line 79, in guarded\n'
                "dynamonet.data.dataset.DataStreamError: decoding shard s3://b/train/shard-00002.parquet failed: x\n"
                "[Rank 1 Error Snippet]:\nTraceback (most recent call last):\nValueError: other\n")
    assert _root_cause(RuntimeError(snippets)) == "DataStreamError: decoding shard s3://b/train/shard-00002.parquet failed: x"
    assert _root_cause(RuntimeError("Traceback:\n  File x\nValueError: model.arch: bad\n")) == "ValueError: model.arch: bad"
    inner = KeyError("k")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert _root_cause(outer) == "KeyError: 'k'"
