"""Object storage (dynamonet.storage): endpoint resolution, filesystems that keep their retries when
pickled, URIs, the RunConfig form of a storage path."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs
import pytest

from dynamonet.storage import (
    RetryingS3FileSystem,
    endpoint_url,
    join_uri,
    ray_storage,
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


def test_ray_storage_gives_bucket_paths_with_a_filesystem_and_absolute_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, fs = ray_storage("s3://sweeps/x/y", "http://127.0.0.1:9")
    assert path == "sweeps/x/y" and isinstance(fs, RetryingS3FileSystem)  # RunConfig refuses s3:// with a fs
    assert fs._settings["endpoint_override"] == "127.0.0.1:9"
    assert ray_storage("runs") == (str(tmp_path / "runs"), None)
    with pytest.raises(ValueError, match="unsupported URL scheme gs://"):
        ray_storage("gs://b/x")
