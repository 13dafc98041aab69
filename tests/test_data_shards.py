"""Storage layer: endpoint resolution, filesystems that keep their retries when pickled, manifest."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs
import pytest

from dynamonet.data.shards import (
    Manifest,
    RetryingS3FileSystem,
    SplitInfo,
    endpoint_url,
    join_uri,
    resolve_endpoint,
    resolve_filesystem,
    uri_path,
)


def test_endpoint_resolution(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert resolve_endpoint("") == "http://env:9000" and resolve_endpoint("http://x:1") == "http://x:1"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert resolve_endpoint("") == ""
    assert endpoint_url("127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert endpoint_url("minio.example.com:9000") == "https://minio.example.com:9000"


def test_s3_filesystem_keeps_endpoint_and_retries_through_pickle(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    fs, path = resolve_filesystem("s3://bucket/some/prefix", "http://127.0.0.1:9", max_attempts=7)
    assert path == "bucket/some/prefix" and isinstance(fs, pafs.S3FileSystem)
    again = pickle.loads(pickle.dumps(fs))
    assert isinstance(again, RetryingS3FileSystem)
    assert again._settings == fs._settings and again._settings["max_attempts"] == 7
    assert again._settings["endpoint_override"] == "127.0.0.1:9" and again._settings["scheme"] == "http"
    fs2, _ = resolve_filesystem("s3://b/p?endpoint_override=127.0.0.1:5&scheme=http")
    assert fs2._settings["endpoint_override"] == "127.0.0.1:5"


def test_local_paths_and_uris(tmp_path):
    fs, path = resolve_filesystem(f"file://{tmp_path}")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    assert join_uri("s3://b/p/", "train", "x.parquet") == "s3://b/p/train/x.parquet"
    assert uri_path("s3://b/p/x?scheme=http") == "b/p/x"


def test_manifest_roundtrip_and_version_check():
    m = Manifest(class_names=["a", "b"], splits={"train": SplitInfo(["train/shard-00000.parquet"], 3, {24: 2, 30: 1})},
                 transcode={"short_side": 128}, root="s3://b/p", labels_hflip_invariant=False)
    again = Manifest.from_json(m.to_json(), root="s3://b/p")
    assert again == m and again.splits["train"].max_frames == 30 and '"min_frames": 24' in m.to_json()
    assert again.shard_uris("train") == ["s3://b/p/train/shard-00000.parquet"]
    with pytest.raises(ValueError, match="format_version"):
        Manifest.from_json(m.to_json().replace('"format_version": 1', '"format_version": 99'))
