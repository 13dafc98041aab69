"""Validation held out from the training split (data.holdout_*, data.val_split=holdout): whole
UCF101 groups on the real file naming, stratified HMDB51 shares, determinism, the composition with
label_fraction on tiny metadata-only shards, evaluate.py's split, and one-line errors. No Ray cluster."""

from __future__ import annotations

import collections
import dataclasses
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_ucf101

from dynamonet.config import DataConfig, load_config
from dynamonet.data.shards import SHARD_SCHEMA, Manifest, SplitInfo
from dynamonet.data.sources import parse_ucf101
from dynamonet.data.subset import (
    holdout_count,
    holdout_group_count,
    holdout_selection,
    select_holdout_by_class,
    select_holdout_by_group,
    select_labeled,
    video_group,
)

UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups", "YoYo"]
TRAIN_GROUPS = range(8, 26)   # UCF101 split 1: groups 1-7 are the test split, 8-25 (18 groups) train


def ucf_ids(groups=TRAIN_GROUPS, classes=UCF_CLASSES):
    """video_id as parse_ucf101 writes it: the path below UCF-101/ without extension, with the
    file's own spelling (HandStandPushups), 4-7 clips per group and class."""
    ids = []
    for ci, cls in enumerate(classes):
        spelled = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in groups:
            ids += [f"{cls}/v_{spelled}_g{g:02d}_c{c:02d}" for c in range(1, 4 + (g + ci) % 4 + 1)]
    return ids


def labels_of(ids):
    return [UCF_CLASSES.index(v.split("/")[0]) for v in ids]


def test_video_group_reads_the_ucf101_file_name():
    assert video_group("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01") == 8
    assert video_group("HandstandPushups/v_HandStandPushups_g25_c07.avi") == 25
    assert video_group("v_YoYo_g01_c03") == 1
    for no_group in ("train/c0/v0", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", "x/v_A_g08_c01_extra"):
        assert video_group(no_group) is None


def test_the_ucf101_parser_ids_carry_their_group(tmp_path):
    videos, ann = make_ucf101(str(tmp_path))
    listing = parse_ucf101(videos, ann, split=1)
    assert {video_group(e.video_id) for e in listing.entries if e.split == "train"} == {8}
    assert {video_group(e.video_id) for e in listing.entries if e.split == "test"} == {1, 2}
    train = [e.video_id for e in listing.entries if e.split == "train"]
    with pytest.raises(ValueError, match=r"^data\.holdout_fraction: 0\.2 of 1 groups \(g08\) would leave no group"):
        select_holdout_by_group(train, 0.2, seed=0)


@pytest.mark.parametrize("fraction, groups", [(0.05, 1), (0.1, 2), (0.15, 3), (0.2, 4), (0.5, 9), (0.9, 16)])
def test_group_holdout_keeps_groups_whole_and_respects_the_fraction(fraction, groups):
    ids = ucf_ids()
    held, held_groups, num_groups = select_holdout_by_group(ids, fraction, seed=0)
    assert num_groups == 18 and len(held_groups) == groups == holdout_group_count(18, fraction)
    assert set(held_groups) <= set(TRAIN_GROUPS)                     # only groups present in the split
    assert held == {v for v in ids if video_group(v) in held_groups}  # every video of a held-out group
    rest = set(ids) - held
    assert not {video_group(v) for v in held} & {video_group(v) for v in rest}   # no group on both sides
    assert {v.split("/")[0] for v in rest} == set(UCF_CLASSES)         # every class still trained on


def test_group_holdout_is_seeded_order_independent_and_nested():
    ids = ucf_ids()
    first = select_holdout_by_group(ids, 0.2, seed=0)
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert select_holdout_by_group(shuffled, 0.2, seed=0) == first
    assert select_holdout_by_group(np.array(ids), 0.2, seed=0) == first
    assert select_holdout_by_group(ids, 0.2, seed=1)[1] != first[1]   # another seed, other groups
    assert set(select_holdout_by_group(ids, 0.1, seed=0)[1]) < set(first[1])   # nested in the fraction
    # split 2's training groups (1-7, 15-25): chosen among those, never a test group 8-14
    split2 = ucf_ids(groups=[*range(1, 8), *range(15, 26)])
    assert not set(select_holdout_by_group(split2, 0.2, seed=0)[1]) & set(range(8, 15))


HMDB_SIZES = {0: 70, 1: 7, 2: 1, 3: 2, 4: 3}   # videos per class, a class of one included


def hmdb_split(sizes=HMDB_SIZES):
    names = ["brush_hair", "cartwheel", "catch", "chew", "clap"]
    ids = [f"{names[c]}/Source{i // 3}_{names[c]}_f_cm_np1_le_med_{i % 3}" for c, n in sizes.items() for i in range(n)]
    return ids, [names.index(v.split("/")[0]) for v in ids]


@pytest.mark.parametrize("fraction, expected", [(0.15, {0: 11, 1: 1, 2: 0, 3: 1, 4: 1}),
                                                (0.5, {0: 35, 1: 4, 2: 0, 3: 1, 4: 2}),
                                                (0.9, {0: 63, 1: 6, 2: 0, 3: 1, 4: 2})])
def test_class_holdout_is_a_stratified_share_per_class(fraction, expected):
    ids, labels = hmdb_split()
    held = select_holdout_by_class(ids, labels, fraction, seed=0)
    per_class = collections.Counter(labels[ids.index(v)] for v in held)
    assert {c: per_class[c] for c in HMDB_SIZES} == expected == {c: holdout_count(n, fraction)
                                                                 for c, n in HMDB_SIZES.items()}
    rest = collections.Counter(labels[ids.index(v)] for v in set(ids) - held)
    assert all(rest[c] >= 1 for c in HMDB_SIZES)     # one video of every class stays for training


def test_class_holdout_is_seeded_order_independent_and_apart_from_label_fraction():
    ids, labels = hmdb_split()
    first = select_holdout_by_class(ids, labels, 0.2, seed=0)
    pairs = list(zip(ids, labels, strict=True))
    random.Random(5).shuffle(pairs)
    assert select_holdout_by_class([p[0] for p in pairs], [p[1] for p in pairs], 0.2, seed=0) == first
    assert select_holdout_by_class(ids, labels, 0.2, seed=0) == first
    assert select_holdout_by_class(ids, labels, 0.2, seed=1) != first
    assert select_holdout_by_class(ids, labels, 0.1, seed=0) < first
    assert first != select_labeled(ids, labels, 0.2, seed=0)   # its own random stream, not label_seed's


def test_selection_describes_itself():
    ids = ucf_ids()
    sel = holdout_selection(ids, labels_of(ids), 0.15, "group", seed=0)
    g = ", ".join(f"g{x:02d}" for x in sel.groups)
    assert sel.describe() == (f"holdout 0.15 by group: 3 of 18 groups ({g}), {sel.num_videos} of {len(ids)} "
                              "training videos held out for validation, holdout_seed 0")
    hids, hlabels = hmdb_split()
    sel = holdout_selection(hids, hlabels, 0.15, "class", seed=2)
    assert sel.describe() == (f"holdout 0.15 by class: 14 of {len(hids)} training videos held out for validation, "
                              "stratified over 5 classes, holdout_seed 2")


def test_errors_are_one_line_naming_the_field():
    ids = ucf_ids()
    cases = [
        (lambda: select_holdout_by_group([*ids, "Archery/v_Archery_g08"], 0.2, 0),
         r"^data\.holdout_by: group needs UCF101 file names v_<Class>_gNN_cMM, but 1 of \d+ training videos have "
         r"no _gNN_cMM group, e.g\. 'Archery/v_Archery_g08' \(use data\.holdout_by=class\)$"),
        (lambda: select_holdout_by_group(ucf_ids(groups=[8, 9]), 0.9, 0), r"^data\.holdout_fraction: 0\.9 of 2 groups"),
        (lambda: select_holdout_by_class(*hmdb_split({0: 1, 1: 1}), 0.5, 0),
         r"^data\.holdout_fraction: 0\.5 holds out no video"),
        (lambda: select_holdout_by_class(*hmdb_split(), 0.0, 0), r"^data\.holdout_fraction: must be in \(0, 1\)"),
        (lambda: select_holdout_by_group(ids, 1.0, 0), r"^data\.holdout_fraction: must be in \(0, 1\)"),
        (lambda: select_holdout_by_group(ids, 0.2, -1), r"^data\.holdout_seed: must be >= 0"),
        (lambda: holdout_selection(ids, labels_of(ids), 0.2, "actor", 0), r"^data\.holdout_by: must be class or group"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as e:
            fn()
        assert "\n" not in str(e.value)


# --- the stream selection on shards (metadata columns only; no video bytes, no Ray cluster) ---

def metadata_shards(tmp_path, ids, labels, per_shard=7):
    """A manifest with a ``train`` split of ``ids`` in shards of ``per_shard`` rows (video bytes empty)."""
    shards = []
    for s, lo in enumerate(range(0, len(ids), per_shard)):
        rows = [{"video_id": v, "video_index": i, "label": y, "label_name": str(y), "split": "train", "video": b"",
                 "num_frames": 20 + i % 5, "fps": 25.0, "height": 64, "width": 64, "source": v + ".avi", "crc32": 0}
                for i, (v, y) in enumerate(zip(ids, labels, strict=True)) if lo <= i < lo + per_shard]
        rel = f"train/shard-{s:05d}.parquet"
        (tmp_path / "train").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), tmp_path / rel)
        shards.append(rel)
    frames = collections.Counter(20 + i % 5 for i in range(len(ids)))
    return Manifest(class_names=UCF_CLASSES, splits={"train": SplitInfo(shards, len(ids), dict(frames))},
                    transcode={}, root=str(tmp_path))


def test_training_and_holdout_streams_partition_the_split(tmp_path):
    from dynamonet.data.dataset import check_split, select_stream_videos

    ids = ucf_ids()
    labels = labels_of(ids)
    m = metadata_shards(tmp_path, ids, labels)
    cfg = DataConfig(root=str(tmp_path), val_split="holdout", holdout_fraction=0.2, holdout_by="group", clip_len=4)
    check_split(cfg, m, "holdout")                                   # checks the training split it comes from
    train = select_stream_videos(cfg, m, "train", training=True)
    val = select_stream_videos(cfg, m, "holdout", training=False)
    assert train.holdout == val.holdout and train.selection is None and val.selection is None
    held = {ids.index(v) for v in val.holdout.video_ids}
    assert set(val.video_indices.tolist()) == held
    assert set(train.video_indices.tolist()) == set(range(len(ids))) - held
    assert sum(val.frame_counts.values()) == len(held)
    assert val.frame_counts == dict(collections.Counter(20 + i % 5 for i in held))
    assert select_stream_videos(cfg, m, "train", training=False) is None   # evaluating train reads all of it
    # label_fraction applies to the training rest only, and never reaches into the held-out part
    half = select_stream_videos(dataclasses.replace(cfg, label_fraction=0.5), m, "train", training=True)
    assert half.selection.split_videos == len(ids) - len(held)
    assert not set(half.video_indices.tolist()) & held and len(half.video_indices) == half.selection.num_videos
    with pytest.raises(ValueError, match=r"^data\.holdout_fraction: the holdout split needs"):
        select_stream_videos(DataConfig(root=str(tmp_path)), m, "holdout", training=False)


def test_evaluate_scores_the_official_test_split_after_a_holdout_run():
    from dynamonet.eval import eval_split

    cfg = load_config(None, ["data.val_split=holdout", "data.holdout_fraction=0.15", "data.holdout_by=group"])
    assert eval_split(cfg) == "test" and eval_split(cfg, "holdout") == "holdout" and eval_split(cfg, "val") == "val"
    assert eval_split(load_config(None, ["data.val_split=test"])) == "test"
    assert eval_split(load_config(None, ["data.val_split="])) == "val"
