"""Annotation parsers on the official layouts (paper §4.2 datasets, §4.4 unlabeled pool)."""

from __future__ import annotations

import pytest
from helpers import make_folder, make_hmdb51, make_kinetics, make_ucf101

from dynamonet.data.sources import parse_source


def test_ucf101_lists_case_quirk_and_missing_files(tmp_path):
    videos, ann = make_ucf101(str(tmp_path), frames=4)
    s = parse_source("ucf101", videos, ann, split=1)
    assert s.class_names == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    train = {e.source: e.label for e in s.entries if e.split == "train"}
    test = {e.source: e.label for e in s.entries if e.split == "test"}
    assert train == {"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi": 0, "Archery/v_Archery_g08_c01.avi": 1,
                     "HandstandPushups/v_HandStandPushups_g08_c01.avi": 2}
    assert len(test) == 6 and test["HandstandPushups/v_HandStandPushups_g01_c01.avi"] == 2
    assert [r["source"] for r in s.rejected] == ["Archery/v_Archery_g09_c05.avi"]
    assert "trainlist01.txt" in s.rejected[0]["reason"]
    e = next(e for e in s.entries if e.label == 1 and e.split == "train")
    assert e.video_id == "Archery/v_Archery_g08_c01" and e.label_name == "Archery"


def test_hmdb51_split_codes(tmp_path):
    videos, ann = make_hmdb51(str(tmp_path), frames=4)
    s = parse_source("hmdb51", videos, ann, split=1)
    assert s.class_names == ["brush_hair", "cartwheel"]
    by_split = {sp: sorted(e.source for e in s.entries if e.split == sp) for sp in ("train", "test")}
    assert by_split["train"] == ["brush_hair/brush_hair_clip_0.avi", "brush_hair/brush_hair_clip_1.avi",
                                 "cartwheel/cartwheel_clip_0.avi", "cartwheel/cartwheel_clip_1.avi"]
    assert by_split["test"] == ["brush_hair/brush_hair_clip_2.avi", "cartwheel/cartwheel_clip_2.avi"]
    assert sorted(r["source"] for r in s.rejected) == ["brush_hair/brush_hair_missing.avi",
                                                       "cartwheel/cartwheel_missing.avi"]


def test_kinetics_csv_nested_and_flat_files(tmp_path):
    videos, csv_path = make_kinetics(str(tmp_path), frames=4)
    s = parse_source("kinetics", videos, csv_path)
    assert s.class_names == ["abseiling", "air drumming"]
    got = sorted((e.split, e.label_name, e.source) for e in s.entries)
    assert got[0] == ("train", "abseiling", "train/abseiling/yt000Ab-x__000000_000010.mp4")
    assert [g[0] for g in got].count("val") == 2 and ("val", "air drumming", "yt003Ab-x__000030_000040.mp4") in got
    assert [r["source"] for r in s.rejected] == ["missingVid01_000000_000010.mp4"]
    with pytest.raises(ValueError, match="--annotations"):
        parse_source("kinetics", videos, "")


def test_folder_with_and_without_split_dirs_and_unlabeled(tmp_path):
    with_splits = make_folder(str(tmp_path / "a"), frames=4)
    s = parse_source("folder", with_splits)
    assert s.class_names == ["jump", "run"] and {e.split for e in s.entries} == {"train", "val"}
    plain = make_folder(str(tmp_path / "b"), frames=4, splits=False)
    s = parse_source("folder", plain)
    assert {e.split for e in s.entries} == {"train"} and len(s.entries) == 4
    u = parse_source("unlabeled", with_splits)
    assert len(u.entries) == 8 and {(e.label, e.split) for e in u.entries} == {(-1, "unlabeled")}
    with pytest.raises(ValueError, match="--source"):
        parse_source("nope", plain)
