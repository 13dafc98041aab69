"""Run storage on a local directory or S3, through ``pyarrow.fs`` (the same layer Ray Train uses).

A run lives at ``<run.storage_path>/<run.name>/``:

    dynamonet_config.yaml     the resolved config (checked when the run resumes)
    checkpoint_epoch0001/     checkpoint.pt (model, optimiser, schedule, scaler, epoch, config, classes)
    ...
    result.json               final metrics, written by the driver
    tensorboard/              event files (for s3:// runs written on the controller's node, copied here)
    eval/                     confusion matrix and per-class accuracy from evaluate.py

S3 URIs use the endpoint of ``data.s3_endpoint`` / ``AWS_ENDPOINT_URL`` and the standard AWS
credential variables (see :func:`dynamonet.data.shards.resolve_filesystem`).
"""

from __future__ import annotations

import os
import posixpath
import re

import pyarrow.fs as pafs

CHECKPOINT_RE = re.compile(r"^checkpoint_epoch(\d+)$")


def is_remote(uri: str) -> bool:
    """True for ``s3://`` (and other non-local) URIs."""
    return "://" in uri and not uri.startswith("file://")


def open_fs(uri: str, endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or an ``s3://`` URI."""
    if is_remote(uri):
        from dynamonet.data.shards import resolve_filesystem

        return resolve_filesystem(uri, endpoint or None)
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return pafs.LocalFileSystem(), path


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small file (atomically on local disk; S3 PUTs are atomic)."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> list[tuple[int, str]]:
    """``[(epoch, path)]`` of the checkpoints of a run, sorted by epoch."""
    if not exists(fs, run_path):
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True)):
        m = CHECKPOINT_RE.match(posixpath.basename(info.path))
        if m and info.type == pafs.FileType.Directory and exists(fs, posixpath.join(info.path, "checkpoint.pt")):
            out.append((int(m.group(1)), info.path))
    return sorted(out)


def list_runs(fs: pafs.FileSystem, storage: str) -> list[tuple[float, str]]:
    """``[(mtime, run_name)]`` of the runs under a storage path holding a dynamonet config."""
    if not exists(fs, storage):
        return []
    runs = []
    for info in fs.get_file_info(pafs.FileSelector(storage, allow_not_found=True)):
        cfg = fs.get_file_info(posixpath.join(info.path, "dynamonet_config.yaml"))
        if info.type == pafs.FileType.Directory and cfg.type == pafs.FileType.File:
            mtime = cfg.mtime.timestamp() if cfg.mtime else 0.0
            runs.append((mtime, posixpath.basename(info.path)))
    return sorted(runs)
