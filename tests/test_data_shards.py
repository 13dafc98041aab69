"""Shard manifest: round trip, version check, shard URIs."""

from __future__ import annotations

import pytest

from dynamonet.data.shards import Manifest, SplitInfo


def test_manifest_roundtrip_and_version_check():
    m = Manifest(class_names=["a", "b"], splits={"train": SplitInfo(["train/shard-00000.parquet"], 3, {24: 2, 30: 1})},
                 transcode={"short_side": 128}, root="s3://b/p", labels_hflip_invariant=False)
    again = Manifest.from_json(m.to_json(), root="s3://b/p")
    assert again == m and again.splits["train"].max_frames == 30 and '"min_frames": 24' in m.to_json()
    assert again.shard_uris("train") == ["s3://b/p/train/shard-00000.parquet"]
    with pytest.raises(ValueError, match="format_version"):
        Manifest.from_json(m.to_json().replace('"format_version": 1', '"format_version": 99'))
