"""Shard schema and manifest of the video shards (a local directory or S3).

DESIGN.md "Shards"; the clips they feed are sampled as in paper §4.3. One Parquet row per video:

    root/                          a local directory, or s3://bucket/prefix
      manifest.json                written last by the ingest: its presence means "complete"
      rejected.jsonl               one JSON object per rejected input, with the reason
      <split>/shard-00000.parquet  SHARD_SCHEMA rows (canonical H.264 bytes + metadata)

Every read and write goes through :mod:`dynamonet.storage` (local directory or S3, the same code
path), shard and manifest writes with its atomic write helper, so a reader or a resumed ingest
never sees a half-written object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dynamonet.storage import join_uri, read_bytes, resolve_filesystem, write_bytes_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.jsonl"

SHARD_SCHEMA = pa.schema([
    ("video_id", pa.string()),      # stable id: source path without extension
    ("video_index", pa.int64()),    # unique within the split
    ("label", pa.int32()),          # index into manifest.class_names, -1 = unlabeled
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("video", pa.binary()),         # canonical mp4 (H.264, yuv420p, no B-frames)
    ("num_frames", pa.int32()),     # frames actually decodable, counted at ingest
    ("fps", pa.float32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("source", pa.string()),        # original path relative to the input root
    ("crc32", pa.int64()),          # zlib.crc32 of `video`
])


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------

@dataclass
class SplitInfo:
    """One split of a dataset: its shard files (relative to the root) and frame statistics."""

    shards: list[str] = field(default_factory=list)
    num_videos: int = 0
    frame_counts: dict[int, int] = field(default_factory=dict)  # num_frames -> videos with that many

    @property
    def max_frames(self) -> int:
        return max(self.frame_counts, default=0)

    @property
    def min_frames(self) -> int:
        return min(self.frame_counts, default=0)


@dataclass
class Manifest:
    """``manifest.json``: what a reader needs to know before touching a shard.

    ``root`` (where it was read from) is not serialised.
    """

    class_names: list[str]
    splits: dict[str, SplitInfo]
    transcode: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)
    rejected: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    plan_id: str = ""
    labels_hflip_invariant: bool = True   # False: a left-right flip changes the class (motion directions)
    hflip_label_map: list[int] | None = None  # class of the mirrored video (flip + relabel); None = no map
    format_version: int = FORMAT_VERSION
    root: str = ""

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("root")
        for name, s in d["splits"].items():
            info = self.splits[name]
            s["frame_counts"] = {str(k): v for k, v in sorted(info.frame_counts.items())}
            s["min_frames"], s["max_frames"] = info.min_frames, info.max_frames
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, root: str = "") -> Manifest:
        d = json.loads(text)
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"manifest format_version {version!r} is not supported (expected {FORMAT_VERSION}); "
                             "re-run pipelines/prepare_data.py")
        splits = {name: SplitInfo(shards=list(s["shards"]), num_videos=int(s["num_videos"]),
                                  frame_counts={int(k): int(v) for k, v in s.get("frame_counts", {}).items()})
                  for name, s in d["splits"].items()}
        return cls(class_names=list(d["class_names"]), splits=splits, transcode=dict(d.get("transcode", {})),
                   counts=dict(d.get("counts", {})), rejected=int(d.get("rejected", 0)),
                   source=dict(d.get("source", {})), plan_id=d.get("plan_id", ""), format_version=version, root=root,
                   labels_hflip_invariant=bool(d.get("labels_hflip_invariant", True)),
                   hflip_label_map=d.get("hflip_label_map"))

    def flip_label_map(self) -> list[int] | None:
        """How training flips treat labels: identity (invariant labels), a mirror map, or None = no flips."""
        if self.labels_hflip_invariant:
            return list(range(len(self.class_names)))
        return list(self.hflip_label_map) if self.hflip_label_map else None

    def shard_uris(self, split: str) -> list[str]:
        """Full URIs of the shards of ``split``."""
        return [join_uri(self.root, p) for p in self.splits[split].shards]


def read_manifest(root: str, endpoint: str = "", fs: pafs.FileSystem | None = None) -> Manifest:
    """Read ``root/manifest.json`` (raises FileNotFoundError if absent)."""
    fs_, path = resolve_filesystem(root, endpoint)
    fs = fs or fs_
    return Manifest.from_json(read_bytes(fs, f"{path}/{MANIFEST_NAME}").decode(), root=root)


def read_split_columns(manifest: Manifest, split: str, columns: Sequence[str] = ("video_index", "video_id"),
                       endpoint: str = "") -> dict[str, list]:
    """``{column: values}`` of ``split``'s small metadata ``columns``, concatenated over its shards in
    manifest order (Parquet column projection: no video bytes are read)."""
    fs, root = resolve_filesystem(manifest.root, endpoint)  # one filesystem for every shard
    out: dict[str, list] = {c: [] for c in columns}
    for rel in manifest.splits[split].shards:
        table = pq.read_table(f"{root}/{rel}", filesystem=fs, columns=list(columns))
        for c in columns:
            out[c].extend(table.column(c).to_pylist())
    return out


def read_video_ids(manifest: Manifest, split: str, endpoint: str = "") -> dict[int, str]:
    """``{video_index: video_id}`` of ``split``, read from its shards' two small columns (no video bytes)."""
    cols = read_split_columns(manifest, split, ("video_index", "video_id"), endpoint)
    return dict(zip(cols["video_index"], cols["video_id"], strict=True))


def write_manifest(manifest: Manifest, endpoint: str = "") -> None:
    """Write ``manifest.root/manifest.json`` atomically."""
    write_bytes_atomic(join_uri(manifest.root, MANIFEST_NAME), manifest.to_json().encode(), endpoint)
