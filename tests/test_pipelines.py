"""End-to-end tests of the entry points on a single-node Ray with local storage.

Every test runs ``pipelines/*.py`` as a subprocess against a ``ray start --head`` cluster on
loopback, on a tiny synthetic motion dataset written as real H.264 shards: checkpoints (the last
``run.keep_checkpoints`` plus the best), result.json and TensorBoard events on local disk;
evaluate and predict; one-line configuration errors. The multi-node paths (``ray job submit``,
S3 storage, a lost node and a resumed driver, pretrain → ``--init-from``, sweeps) run on the
rehearsal cluster (tests/test_rehearsal.py).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from pipeline_helpers import checkpoint_epochs, pipeline, run, small_settings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipelines")
    return {"cache": str(base / "cache"), "runs": base / "runs"}


def settings(dirs, epochs: int = 3) -> list[str]:
    """The small settings with the embedded recipe's sources of randomness on: dropout, two decode
    tasks finishing in any order, the local shuffle buffer (the recipe's), two DDP ranks."""
    return [*small_settings(dirs["cache"], str(dirs["runs"]), epochs),
            "--set", "model.dropout=0.2", "--set", "data.decode_actors=2"]


@pytest.fixture(scope="module")
def trained(ray_head, dirs):
    """One 4-epoch joint run shared by the tests that need a trained model."""
    p = run(pipeline("train_joint.py", *settings(dirs, 4), "--name", "e2e"), ray_head.client_env())
    assert p.returncode == 0, p.stderr[-3000:]
    return p, dirs["runs"] / "e2e"


def test_train_joint_end_to_end(trained):
    p, run_dir = trained
    last = p.stdout.strip().splitlines()[-1]
    assert re.match(r"DONE run=e2e epochs=4 val_top1=[\d.]+ val_top5=[\d.]+ fp_ssim=[\d.]+ .*wall_time=[\d.]+s", last), last
    assert checkpoint_epochs(run_dir) == [3, 4]  # run.keep_checkpoints=2: older ones deleted
    for e in (3, 4):
        state = torch.load(run_dir / f"checkpoint_epoch{e:04d}" / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == e and set(state) >= {"model", "optimizer", "schedule", "config", "class_names"}
    best = json.loads((run_dir / "checkpoint_best" / "best.json").read_text())
    state = torch.load(run_dir / "checkpoint_best" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == best["epoch"] and state["metrics"]["val/top1"] == best["value"]
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    assert result["run"] == "e2e" and m["epoch"] == 4 and len(result["class_names"]) == 4
    assert result["best_checkpoint"] == str(run_dir / "checkpoint_best")
    for key in ("train/loss_fp", "train/loss_ce", "val/top1", "val/top5", "val/fp_ssim", "perf/clips_per_s",
                "perf/data_wait_s_per_step"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert abs(best["value"] - max(_val_top1_per_epoch(run_dir))) < 1e-6, best  # the best of the 4 validations
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _val_top1_per_epoch(run_dir: Path) -> list[float]:
    return [v for _, v in _scalars(run_dir, "val/top1")]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(epoch, value) of a per-epoch TensorBoard scalar, in epoch order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return sorted((e.step, e.value) for e in acc.Scalars(tag))


def test_same_seed_reproduces_the_run_bitwise_also_when_resumed(trained, dirs, ray_head):
    """Same seed and config: the same per-epoch losses and top-1, and bitwise the same weights, as
    the shared 4-epoch run (train.deterministic, the recipe's default). The repeat stops after 2
    epochs and is resumed to 4: the draws and the dropout of epochs 3-4 come from (seed, epoch, ...),
    so resuming changes nothing. Extending train.epochs needs no ``--force``; the resume also sets
    optim.min_lr, which changes no result under the constant lr but is part of the config: it is
    refused in one line, then ``--force`` resumes with the new config."""
    _, ref = trained
    rep = dirs["runs"] / "e2e-repeat"
    first = run(pipeline("train_joint.py", *settings(dirs, 2), "--name", "e2e-repeat"), ray_head.client_env())
    assert first.returncode == 0, first.stderr[-3000:]
    extended = [*settings(dirs, 4), "--name", "e2e-repeat", "--set", "optim.min_lr=1e-6"]
    refused = run(pipeline("train_joint.py", *extended), ray_head.client_env(), timeout=120)
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]  # after Ray's connection lines
    assert refused.returncode == 2 and len(errors) == 1 and refused.stderr.strip().endswith(errors[0]), \
        refused.stderr[-2000:]
    assert errors[0].startswith("error: run.name: run 'e2e-repeat' already exists with a different config") and \
        "optim.min_lr: 0.0 -> 1e-06" in errors[0] and "--force" in errors[0], errors
    assert "RayTrainWorker" not in refused.stdout + refused.stderr and checkpoint_epochs(rep) == [1, 2]  # untouched
    second = run(pipeline("train_joint.py", *extended, "--force"), ray_head.client_env())
    assert second.returncode == 0 and "resuming 'e2e-repeat' from epoch 2" in second.stdout, second.stderr[-3000:]
    assert "DONE run=e2e-repeat epochs=4" in second.stdout and checkpoint_epochs(rep) == [3, 4]
    assert "min_lr: 1.0e-06" in (rep / "dynamonet_config.yaml").read_text()  # the run carries its new config
    for tag in ("train/loss_fp", "train/loss_ce", "val/loss", "val/top1", "val/fp_ssim"):
        assert _scalars(rep, tag) == _scalars(ref, tag) and len(_scalars(ref, tag)) == 4, tag
    a = torch.load(ref / "checkpoint_epoch0004" / "checkpoint.pt", weights_only=True)
    b = torch.load(rep / "checkpoint_epoch0004" / "checkpoint.pt", weights_only=True)
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, different[:5]
    assert a["metrics"]["val/top1"] == b["metrics"]["val/top1"]


def test_evaluate_and_predict(trained, tmp_path, ray_head, dirs):
    _, run_dir = trained
    p = run(pipeline("evaluate.py", "--checkpoint", str(run_dir)), ray_head.client_env())
    assert p.returncode == 0
    out_dir = run_dir / "eval" / "val"
    report = json.loads((out_dir / "metrics.json").read_text())
    metrics = report["metrics"]
    for key in ("eval/top1", "eval/top5", "eval/clip_top1", "eval/fp_ssim", "eval/copy_last_ssim"):
        assert math.isfinite(metrics[key]) and 0 <= metrics[key] <= 1, (key, metrics[key])
    assert math.isfinite(metrics["eval/fp_psnr"]) and metrics["eval/fp_psnr"] > 0
    assert metrics["eval/top5"] == 1.0  # 4 classes: the top 5 hold every class
    # one row per video; the video top-1 is the share of rows whose predicted class is the label
    with open(out_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["num_videos"] == 12 and len({r["video_id"] for r in rows}) == 12
    share = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    assert abs(metrics["eval/top1"] - share) < 1e-6  # the metric is a float32 mean (10/12 is off by 1e-8)
    per_class = {r["class"]: r for r in csv.DictReader((out_dir / "per_class.csv").read_text().splitlines())}
    for name, row in per_class.items():
        mine = [r for r in rows if r["label"] == name]
        assert int(row["videos"]) == len(mine) == 3
        assert abs(float(row["top1"]) - sum(r["predicted"] == name for r in mine) / 3) < 1e-3
    _assert_png(out_dir / "confusion_matrix.png")
    # the mean over several checkpoints (UCF101/HMDB51 splits protocol)
    two = run(pipeline("evaluate.py", "--checkpoint", str(run_dir / "checkpoint_epoch0003"),
                       "--checkpoint", str(run_dir / "checkpoint_best"), "--out", str(tmp_path / "ev")),
              ray_head.client_env())
    assert two.returncode == 0 and "mean_over_splits" in two.stdout
    s1 = json.loads((tmp_path / "ev" / "split1" / "metrics.json").read_text())["metrics"]["eval/top1"]
    s2 = json.loads((tmp_path / "ev" / "split2" / "metrics.json").read_text())["metrics"]["eval/top1"]
    assert f"top1={(s1 + s2) / 2:.4f}" in two.stdout.splitlines()[-1]

    # predict.py on a video file of known class: the validation video the evaluation was surest of
    right = [r for r in rows if r["label"] == r["predicted"]]
    assert right, rows  # a trained model gets at least one of 12 right
    sure = max(right, key=lambda r: float(r["score"]))
    video = tmp_path / "known.mp4"
    video.write_bytes(_video_bytes(dirs, "val", sure["video_id"]))
    fig = tmp_path / "fig.png"
    q = run(pipeline("predict.py", str(video), "--checkpoint", str(run_dir), "--save-figure", str(fig)),
            ray_head.client_env())
    assert q.returncode == 0
    ranks = [line.split() for line in q.stdout.splitlines() if re.match(r"\s+\d\. ", line)]
    assert len(ranks) == 4 and {r[1] for r in ranks} == set(per_class)  # top-5 of a 4-class model
    assert ranks[0][1] == sure["label"], (sure, q.stdout)
    probs = [float(r[2]) for r in ranks]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 0.01
    _assert_png(fig)


def _video_bytes(dirs: dict, split: str, video_id: str) -> bytes:
    """The canonical video ``video_id`` of the synthetic set, as stored in its shards."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dynamonet.data.shards import read_manifest

    manifest = read_manifest(str(next((Path(dirs["cache"]) / "synthetic").glob("synthetic-*"))))
    for uri in manifest.shard_uris(split):
        table = pq.read_table(uri, columns=["video_id", "video"])
        hit = table.filter(pc.equal(table["video_id"], video_id))
        if hit.num_rows:
            return hit["video"][0].as_py()
    raise AssertionError(f"{video_id} is in no {split} shard")


def _assert_png(path: Path) -> None:
    """A readable PNG with a picture in it (not one flat colour)."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 100 and img.shape[1] >= 100 and float(img[..., :3].std()) > 0.01


def test_stfn_on_the_features_of_the_trained_run(trained, dirs, ray_head):
    """train_stfn.py on the shared run: its clip features (the Ray Data job; checked against the
    model run here on the same clips, decoded without Ray), STFN on 2 DDP workers, resumed with more
    epochs (features reused), then evaluate.py on the STFN run: the clip mean it prints beside STFN
    is the run's own §4.3 validation of that checkpoint. STFN trains on the 12 validation videos
    to keep this short (one feature set serves both; the config guard is tested without Ray in
    test_stfn_features.py)."""
    from dynamonet.config import Config
    from dynamonet.features import collate, read_features
    from dynamonet.models import build_model_from_config
    from dynamonet.train.engine import prepare_batch

    _, run_dir = trained
    runs, env = dirs["runs"], ray_head.client_env()
    args = [f"--stfn.checkpoint={run_dir}", f"--run.storage_path={runs}", "--name", "stfn-e2e", "--stfn.width=8",
            "--stfn.depth=1", "--stfn.batch_size=4", "--stfn.num_workers=2", "--stfn.train_split=val"]
    p = run(pipeline("train_stfn.py", *args, "--stfn.epochs=2"), env)
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"DONE run=stfn-e2e epochs=2 split=val videos=12 stfn_top1=\d\.\d{4} "
                        r"clip_mean_top1=(\d\.\d{4}) wall_time=\d+\.\ds", last), last
    state = torch.load(run_dir / "checkpoint_epoch0004" / "checkpoint.pt", weights_only=True)  # the latest
    assert float(last.split("clip_mean_top1=")[1].split()[0]) == pytest.approx(state["metrics"]["val/top1"], abs=1e-4)
    assert "[features] val: reusing 12 videos" in p.stdout  # extracted once, for training and for validation
    meta = json.loads((run_dir / "features" / "val" / "features.json").read_text())
    assert (meta["num_videos"], meta["epoch"], meta["skipped"]) == (12, 4, [])

    # the features are the model's AR, DMR and logits on every evaluation clip
    cfg = Config.from_dict(state["config"])
    clips = _eval_clips(dirs, cfg, "val")
    model = build_model_from_config(cfg, 4)
    model.load_state_dict(state["model"])
    batch = prepare_batch({k: torch.as_tensor(clips[k]) for k in ("clip", "label", "status", "video_index")},
                          torch.device("cpu"))
    with torch.no_grad():
        ar, dmr = model.eval().extract_features(batch.x)
        logits = model.classify(ar, dmr)
    table = read_features(str(run_dir / "features" / "val"))
    feats, row = collate(table), {v: i for i, v in enumerate(table.column("video_index").to_pylist())}
    assert int(feats.mask.sum()) == len(clips["clip"]) == meta["num_clips"]
    for k, (v, c) in enumerate(zip(clips["video_index"], clips["clip_index"], strict=True)):
        i = row[int(v)]
        for got, want in ((feats.ar, ar), (feats.dmr, dmr), (feats.logits, logits)):
            torch.testing.assert_close(got[i, int(c)], want[k], atol=1e-4, rtol=1e-4)

    q = run(pipeline("train_stfn.py", *args, "--stfn.epochs=3"), env)
    assert q.returncode == 0 and "resuming 'stfn-e2e' from epoch 2" in q.stdout, q.stderr[-3000:]
    assert q.stdout.count("[features] val: reusing") == 2 and "DynamoNet" not in q.stdout  # nothing redone
    result = json.loads((runs / "stfn-e2e" / "result.json").read_text())
    assert result["metrics"]["epoch"] == 3 and result["metrics"]["run/resumed_from_epoch"] == 2
    assert checkpoint_epochs(runs / "stfn-e2e") == [2, 3]

    e = run(pipeline("evaluate.py", "--checkpoint", str(runs / "stfn-e2e")), env)
    assert e.returncode == 0, e.stderr[-3000:]
    line = [ln for ln in e.stdout.splitlines() if ln.startswith("EVAL ")][-1]
    m = re.fullmatch(r"EVAL stfn_top1=(\S+) clip_mean_top1=(\S+) stfn_top5=\S+ clip_mean_top5=\S+ clips_per_video=1\.0", line)
    assert m and float(m.group(2)) == pytest.approx(state["metrics"]["val/top1"], abs=1e-4), line
    reports = runs / "stfn-e2e" / "eval" / "val"
    assert (reports / "predictions.csv").read_text().splitlines()[0] == \
        "video_id,label,predicted,score,clip_mean_predicted"
    stored = json.loads((reports / "metrics.json").read_text())["metrics"]
    assert stored["eval/stfn_top1"] == pytest.approx(float(m.group(1)), abs=5e-5)
    _assert_png(reports / "confusion_matrix.png")


def _eval_clips(dirs: dict, cfg, split: str) -> dict:
    """Every evaluation clip of ``split`` (centre crop), decoded here without Ray from the shards."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dynamonet.data.decode import ClipDecoder
    from dynamonet.data.shards import read_manifest

    manifest = read_manifest(str(next((Path(dirs["cache"]) / "synthetic").glob("synthetic-*"))))
    table = pa.concat_tables([pq.read_table(u) for u in manifest.shard_uris(split)])
    decode = ClipDecoder(clip_len=cfg.data.clip_len, frame_stride=cfg.data.frame_stride, crop_size=cfg.data.crop_size,
                         resize_short=cfg.data.resize_short, training=False)
    out = decode({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
    assert (np.asarray(out["status"]) == 0).all()
    return out


def test_bad_configuration_fails_fast_with_one_line(trained, dirs, ray_head, s3_server, closed_port):
    root = str(next((Path(dirs["cache"]) / "synthetic").glob("synthetic-*")))
    closed = f"http://127.0.0.1:{closed_port}"
    cases = [
        (["--model", "r3d_bogus"], "error: model.arch"),
        (["--data", "/nonexistent/dataset"], "error: data.root"),
        (["--data", "s3://no-bucket/ds", "--s3-endpoint", closed], "error: data.s3_endpoint"),
        (["--data", root, "--clip-len", "64"], "error: data.clip_len"),
    ]
    env = {k: v for k, v in ray_head.client_env().items() if k != "RAY_ADDRESS"}
    for extra, prefix in cases:
        p = run(pipeline("train_joint.py", "--set", f"run.storage_path={dirs['runs']}", *extra), env, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (extra, p.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(prefix), (extra, lines)
        assert "RayTrainWorker" not in p.stdout + p.stderr and "Started a local Ray" not in p.stderr

