"""Clip-feature sets and STFN training pieces without Ray: the Parquet format, padding and masks,
the clip mean of §4.3, STFN learning an order that a mean of clips cannot see, the stfn config
section, the name of a recipe's DynamoNet run, and stfn sweeps."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from dynamonet import features
from dynamonet.config import Config, load_config
from dynamonet.features import clip_mean_scores, collate, read_features, read_manifest, score_videos, video_table
from dynamonet.models import STFN

DIMS = (5, 3, 4)  # ar_dim, dmr_dim, classes


def _videos(lengths: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"video_index": i, "video_id": f"v{i}", "label": i % DIMS[2], "clip_index": np.arange(n),
             "ar": rng.standard_normal((n, DIMS[0])), "dmr": rng.standard_normal((n, DIMS[1])),
             "logits": rng.standard_normal((n, DIMS[2])), "skipped": "" if n else "corrupt: no decodable clip"}
            for i, n in enumerate(lengths)]


def _write_set(tmp_path, videos: list[dict], files: int = 2) -> str:
    root = tmp_path / "features"
    (root / features.VIDEOS).mkdir(parents=True)
    step = -(-len(videos) // files)
    for k in range(files):  # out of order on purpose: readers sort by video_index
        part = videos[::-1][k * step:(k + 1) * step]
        pq.write_table(video_table(part, DIMS), root / features.VIDEOS / f"part-{k}.parquet")
    (root / features.MANIFEST).write_text(json.dumps({"format": features.FORMAT, "class_names": list("abcd")}))
    return str(root)


def test_parquet_round_trip_pads_masks_and_drops_videos_without_clips(tmp_path) -> None:
    videos = _videos([3, 1, 0, 5, 2])
    root = _write_set(tmp_path, videos)
    assert read_manifest(root)["class_names"] == list("abcd")
    table = read_features(root)
    assert table.column("video_id").to_pylist() == ["v0", "v1", "v3", "v4"]  # v2 has no clip: dropped
    b = collate(table)
    assert b.ar.shape == (4, 5, DIMS[0]) and b.logits.shape == (4, 5, DIMS[2])
    assert b.mask.sum(1).tolist() == [3, 1, 5, 2] and b.labels.tolist() == [0, 1, 3, 0]
    for row, v in enumerate(videos[i] for i in (0, 1, 3, 4)):
        n = len(v["clip_index"])
        np.testing.assert_allclose(b.ar[row, :n].numpy(), v["ar"].astype(np.float32))
        np.testing.assert_allclose(b.dmr[row, :n].numpy(), v["dmr"].astype(np.float32))
        assert not b.ar[row, n:].any() and not b.mask[row, n:].any()
    # a slice (as a batch of a larger table is) collates the same rows
    part = collate(table.slice(2, 2))
    torch.testing.assert_close(part.ar, b.ar[2:4, :5])
    raw = pq.read_table(os.path.join(root, features.VIDEOS, "part-0.parquet"))
    assert str(raw.schema.field("ar").type) == "list<element: fixed_size_list<element: float>[5]>"


def test_missing_or_foreign_manifest_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no features.json under"):
        read_manifest(str(tmp_path))
    (tmp_path / features.MANIFEST).write_text("{}")
    with pytest.raises(ValueError, match="not a DynamoNet feature set"):
        read_manifest(str(tmp_path))


def test_clip_mean_is_the_mean_of_softmax_over_real_clips_only(tmp_path) -> None:
    b = collate(read_features(_write_set(tmp_path, _videos([3, 1, 4]))))
    got = clip_mean_scores(b)
    for row, n in enumerate(b.mask.sum(1).tolist()):
        torch.testing.assert_close(got[row], b.logits[row, :n].softmax(-1).mean(0))


def _order_batch(n_videos: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of noisy "motion" vectors: class 0 = A then B, class 1 = B then A, with static
    clips around them and variable lengths; the bag of clips is the same for both classes."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    n_max = 9
    ar, dmr = torch.zeros(n_videos, n_max, 4), torch.zeros(n_videos, n_max, 8)
    mask = torch.zeros(n_videos, n_max, dtype=torch.bool)
    labels = torch.arange(n_videos) % 2
    for i in range(n_videos):
        n = int(torch.randint(5, n_max + 1, (1,), generator=g))
        first, second = (a, b) if labels[i] == 0 else (b, a)
        lead = int(torch.randint(0, n - 4, (1,), generator=g))
        dmr[i, lead + 1], dmr[i, lead + 3] = first, second
        dmr[i, :n] += 0.1 * torch.randn(n, 8, generator=g)
        ar[i, :n] = torch.randn(n, 4, generator=g)  # appearance: no class information
        mask[i, :n] = True
    return ar, dmr, mask, labels


def test_stfn_learns_an_order_that_the_mean_of_clips_cannot_separate() -> None:
    torch.manual_seed(0)
    ar, dmr, mask, y = _order_batch(512, seed=1)
    tar, tdmr, tmask, ty = _order_batch(256, seed=2)
    model = STFN(4, 8, 2, width=16, depth=1, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(200):  # seeded: 0.996 on the held-out videos (0.94..1.0 over other data seeds)
        loss = F.cross_entropy(model(ar, dmr, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        stfn_acc = float((model(tar, tdmr, tmask).argmax(1) == ty).float().mean())
    # the best any classifier of the clip mean can do: the mean of a video's clips is the same
    # for both orders up to noise (a logistic regression on it, fitted on the test set itself)
    mean = torch.cat([(x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True) for x, m in
                      ((tar, tmask), (tdmr, tmask))], dim=1)
    w = torch.zeros(mean.shape[1], 2, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=0.05)
    for _ in range(300):
        loss = F.cross_entropy(mean @ w, ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mean_acc = float(((mean @ w).argmax(1) == ty).float().mean())
    assert stfn_acc >= 0.95, stfn_acc
    assert mean_acc <= 0.75, mean_acc


def test_score_videos_reports_stfn_beside_the_clip_mean(tmp_path) -> None:
    table = read_features(_write_set(tmp_path, _videos([2, 3, 1, 4, 2, 2])))
    torch.manual_seed(0)
    model = STFN(DIMS[0], DIMS[1], DIMS[2], width=8, depth=1)
    res = score_videos(model, [table.slice(0, 4), table.slice(4)], DIMS[2])
    b = collate(table)
    with torch.no_grad():
        logits = model.eval()(b.ar, b.dmr, b.mask)
    assert res.metrics["videos"] == 6
    assert res.metrics["top1"] == pytest.approx(float((logits.argmax(1) == b.labels).float().mean()))
    assert res.metrics["clip_mean_top1"] == pytest.approx(float((clip_mean_scores(b).argmax(1) == b.labels)
                                                                 .float().mean()))
    assert res.metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, b.labels)), rel=1e-5)
    assert [p[0] for p in res.predictions] == [f"v{i}" for i in range(6)] and int(res.confusion.sum()) == 6


def test_stfn_section_is_validated_and_its_epochs_may_change_on_resume() -> None:
    for key, value, match in (("stfn.kernel_sizes", "[1, 4]", "stfn.kernel_sizes"),
                              ("stfn.width", "2", "stfn.width"), ("stfn.train_split", "holdout", "stfn.train_split"),
                              ("stfn.lr", "0", "stfn.lr"), ("stfn.num_workers", "0", "stfn.num_workers")):
        with pytest.raises(ValueError, match=match):
            load_config(None, [f"{key}={value}"])
    cfg = Config()
    assert cfg.override("stfn.epochs", 99).fingerprint() == cfg.fingerprint()
    assert cfg.override("stfn.width", 32).fingerprint() != cfg.fingerprint()


def test_the_recipe_dynamonet_run_is_named_by_its_own_config_only() -> None:
    from dynamonet.train.stfn import backbone_checkpoint, backbone_config

    cfg = load_config("pipelines/recipes/embedded_stfn.yaml")
    name = backbone_config(cfg).run.name
    assert name.startswith("embedded_stfn-dynamonet-")
    # STFN's settings and the STFN run's own name do not change which DynamoNet it uses...
    for key, value in (("stfn.width", 256), ("stfn.depth", 3), ("run.name", "other"), ("stfn.epochs", 3)):
        assert backbone_config(cfg.override(key, value)).run.name == name
    # ...the DynamoNet's settings do, and an explicit checkpoint wins
    assert backbone_config(cfg.override("model.kernel_size", 3)).run.name != name
    assert backbone_checkpoint(cfg).endswith(f"/{name}/checkpoint_best")
    assert backbone_checkpoint(cfg.override("stfn.checkpoint", "s3://b/runs/x")) == "s3://b/runs/x"
    assert backbone_config(cfg).stfn == Config().stfn


def test_stfn_sweep_space_varies_stfn_only(tmp_path) -> None:
    from dynamonet.sweep import _scheduler, load_space

    space, base = load_space("tune/spaces/stfn.yaml")
    assert space.pipeline == "stfn" and set(space.params) == {"stfn.width", "stfn.depth"}
    assert space.num_trials() == 9
    assert _scheduler(space, base, None)._max_t == base.stfn.epochs == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: embedded_stfn\npipeline: stfn\nparams: {model.kernel_size: {grid: [3, 5]}}\n")
    with pytest.raises(ValueError, match="params.model.kernel_size: an stfn sweep varies STFN only"):
        load_space(str(bad))
    bad.write_text("recipe: embedded_stfn\npipeline: stfn\nmetric: val/fp_ssim\nparams: {stfn.depth: {grid: [1]}}\n")
    with pytest.raises(ValueError, match="val/clip_mean_top1"):
        load_space(str(bad))
    bad.write_text("recipe: embedded_stfn\npipeline: fusion\nparams: {stfn.depth: {grid: [1]}}\n")
    with pytest.raises(ValueError, match="pipeline must be joint or stfn"):
        load_space(str(bad))


def test_train_stfn_refuses_a_bad_config_in_one_line_before_ray_starts() -> None:
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "pipelines/train_stfn.py", "--set", "stfn.kernel_sizes=[1, 2]"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: stfn.kernel_sizes: must be a non-empty list of odd integers >= 1, got [1, 2]"]


def test_recipe_init_from_finds_the_finished_run_of_that_recipe(tmp_path) -> None:
    """``run.init_from: recipe:embedded`` reuses README's first run: the newest run in storage with
    the recipe's config that finished all its epochs (a shorter one or another config is not it)."""
    import time

    import yaml

    from dynamonet.train.stfn import recipe_checkpoint

    base = load_config("pipelines/recipes/embedded.yaml", [f"run.storage_path={tmp_path}"])
    for name, cfg, epochs in (("full", base, 18), ("other", base.override("model.kernel_size", 3), 18),
                              ("short", base, 1)):  # written oldest first
        run = tmp_path / name
        run.mkdir()
        (run / "dynamonet_config.yaml").write_text(yaml.safe_dump(cfg.override("run.name", name).to_dict()))
        (run / "result.json").write_text(json.dumps({"metrics": {"epoch": epochs}}))
        time.sleep(0.02)  # runs are ordered by their config's mtime
    like = load_config("pipelines/recipes/embedded_stfn.yaml", [f"run.storage_path={tmp_path}"])
    assert recipe_checkpoint("embedded", like) == f"{tmp_path}/full/checkpoint_best"


def test_a_feature_set_in_object_storage_reads_like_a_local_one(tmp_path, s3_bucket) -> None:
    """The cluster case: the set lives in S3 (moto on loopback, through pyarrow's S3 filesystem)."""
    from dynamonet import storage

    local = _write_set(tmp_path, _videos([2, 0, 3]))
    remote = f"{s3_bucket}/runs/r/features/val"
    storage.upload_dir(os.path.join(local, features.VIDEOS), f"{remote}/{features.VIDEOS}")
    fs, path = storage.resolve_filesystem(remote)
    storage.write_bytes(fs, f"{path}/{features.MANIFEST}", open(os.path.join(local, features.MANIFEST), "rb").read())
    assert features.video_files(remote) == sorted(f"{path}/videos/part-{k}.parquet" for k in range(2))
    assert read_manifest(remote)["class_names"] == list("abcd")
    got, want = read_features(remote), read_features(local)
    assert got.equals(want) and got.column("video_id").to_pylist() == ["v0", "v2"]


def test_a_changed_config_is_refused_before_any_work(tmp_path) -> None:
    """The config guard of train_joint.py, for STFN runs: same name, other config → one line naming
    the keys, before Ray starts or any DynamoNet or feature work; more stfn.epochs is a resume."""
    from dynamonet.train.ray_train import save_run_config
    from dynamonet.train.stfn import prepare_stfn_run

    cfg = load_config("pipelines/recipes/embedded_stfn.yaml", [f"run.storage_path={tmp_path}", "run.name=s",
                                                               f"stfn.checkpoint={tmp_path}/no-such-run"])
    save_run_config(cfg, f"{tmp_path}/s")
    with pytest.raises(ValueError, match=r"run.name: run 's' already exists with a different config "
                                         r"\(stfn.width: 64 -> 16\); choose another --name, or pass --force"):
        prepare_stfn_run(cfg.override("stfn.width", 16))
    ray_before = _ray_up()
    with pytest.raises(ValueError, match=f"stfn.checkpoint: checkpoint not found: {tmp_path}/no-such-run"):
        prepare_stfn_run(cfg.override("stfn.epochs", 80))  # past the guard: the next check, still without Ray
    assert _ray_up() == ray_before  # no Ray was started here (the session's own Ray may be up already)


def _ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()
