"""Shard schema, manifest, and the storage layer (local directory or S3) of the video shards.

DESIGN.md "Shards"; the clips they feed are sampled as in paper §4.3. One Parquet row per video:

    root/                          a local directory, or s3://bucket/prefix
      manifest.json                written last by the ingest: its presence means "complete"
      rejected.jsonl               one JSON object per rejected input, with the reason
      <split>/shard-00000.parquet  SHARD_SCHEMA rows (canonical H.264 bytes + metadata)

Storage goes through :mod:`pyarrow.fs` for reading (the same code path for both kinds of root) and
through one atomic write helper: temp file + rename locally, a single PUT (boto3) on S3, so a
reader or a resumed ingest never sees a half-written object.

S3: pyarrow's ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL``, so the endpoint is resolved here
(explicit argument > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` > AWS itself). Credentials
come from the standard AWS chain (environment variables, profile, instance role). Retries are
configured in the clients (pyarrow ``retry_strategy`` + timeouts, botocore ``retries``): there is
no retry loop of our own. pyarrow drops ``retry_strategy`` when an ``S3FileSystem`` is pickled
(its ``__reduce__`` omits it), which would silently strip the retries from every Ray Data read task;
:class:`RetryingS3FileSystem` pickles its full settings instead.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.jsonl"

# Retry policy for streaming reads and ingest writes: AWS "standard" mode (exponential backoff
# with jitter, each wait capped at 20 s). 10 attempts ride out ~75 s of unreachable endpoint.
S3_MAX_ATTEMPTS = 10
S3_CONNECT_TIMEOUT = 5.0
S3_REQUEST_TIMEOUT = 60.0
# Driver-side probe (open_dataset): one attempt, short timeouts, so a wrong endpoint fails fast.
PROBE_CONNECT_TIMEOUT = 2.0
PROBE_REQUEST_TIMEOUT = 5.0

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
# URIs and filesystems
# --------------------------------------------------------------------------------------------

def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/...`` URIs."""
    return uri.startswith("s3://")


def join_uri(root: str, *parts: str) -> str:
    """``root`` + ``/part`` for local paths and ``s3://`` URIs alike (query strings are dropped)."""
    base = root.split("?", 1)[0].rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts if p]])


def uri_path(uri: str) -> str:
    """The filesystem path of a URI: ``bucket/key`` for ``s3://``, an absolute path otherwise."""
    if is_s3(uri):
        parsed = urlparse(uri)
        return (parsed.netloc + parsed.path).rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def resolve_endpoint(endpoint: str = "") -> str:
    """The S3 endpoint to use: ``endpoint`` if given, else ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL``, else ``""`` (AWS itself)."""
    return (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "").strip()


def endpoint_url(endpoint: str) -> str:
    """Normalise an endpoint to a URL. A bare ``host:port`` means http on loopback hosts
    (local servers such as MinIO or moto) and https elsewhere."""
    if not endpoint or "://" in endpoint:
        return endpoint.rstrip("/")
    host = endpoint.split(":", 1)[0]
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return f"{'http' if loopback else 'https'}://{endpoint.rstrip('/')}"


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class RetryingS3FileSystem(pafs.S3FileSystem):
    """An ``S3FileSystem`` that keeps its retry strategy when pickled to Ray workers."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = dict(settings)
        kw = dict(settings)
        mode, attempts = kw.pop("retry_mode"), kw.pop("max_attempts")
        strategy = (pafs.AwsStandardS3RetryStrategy if mode == "standard" else pafs.AwsDefaultS3RetryStrategy)
        super().__init__(retry_strategy=strategy(max_attempts=attempts), **kw)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RetryingS3FileSystem, (self._settings,))


def s3_settings(endpoint: str = "", *, max_attempts: int = S3_MAX_ATTEMPTS,
                connect_timeout: float = S3_CONNECT_TIMEOUT,
                request_timeout: float = S3_REQUEST_TIMEOUT) -> dict[str, Any]:
    """Keyword settings of :class:`RetryingS3FileSystem` for ``endpoint`` (see :func:`resolve_endpoint`)."""
    url = endpoint_url(resolve_endpoint(endpoint))
    kw: dict[str, Any] = {"connect_timeout": connect_timeout, "request_timeout": request_timeout,
                          "retry_mode": "standard", "max_attempts": max_attempts}
    region = _region()
    if url:
        parsed = urlparse(url)
        kw.update(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region or "us-east-1")
    elif region:
        kw["region"] = region
    return kw


def s3_filesystem(endpoint: str = "", **kw: Any) -> RetryingS3FileSystem:
    """A pyarrow S3 filesystem with an explicit endpoint and retries (see :func:`s3_settings`)."""
    return RetryingS3FileSystem(s3_settings(endpoint, **kw))


def resolve_filesystem(uri: str, endpoint: str = "", **s3_kw: Any) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path, ``file://`` URI or ``s3://bucket/prefix``.

    An ``s3://`` URI may carry ``?endpoint_override=host:port&scheme=http`` (the form Ray Train's
    ``storage_path`` accepts); an explicit ``endpoint`` wins over it. ``s3_kw`` go to
    :func:`s3_settings` (``max_attempts``, timeouts).
    """
    if is_s3(uri):
        parsed = urlparse(uri)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if not endpoint and "endpoint_override" in query:
            endpoint = f"{query.get('scheme', 'https')}://{query['endpoint_override']}"
        return s3_filesystem(endpoint, **s3_kw), uri_path(uri)
    scheme = urlparse(uri).scheme
    if "://" in uri and scheme != "file":
        raise ValueError(f"{uri}: unsupported URL scheme {scheme}://; use a local path or s3://bucket/prefix "
                         "(GCS and other stores through their S3-compatible endpoint, see docs/cluster.md)")
    return pafs.LocalFileSystem(), uri_path(uri)


def boto3_client(endpoint: str = "", *, max_attempts: int = S3_MAX_ATTEMPTS) -> Any:
    """A boto3 S3 client with the same endpoint rules and a configured (standard-mode) retry policy."""
    import boto3
    from botocore.config import Config

    url = endpoint_url(resolve_endpoint(endpoint))
    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                    connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_REQUEST_TIMEOUT,
                    s3={"addressing_style": "path"} if url else None)
    return boto3.client("s3", endpoint_url=url or None, region_name=_region() or ("us-east-1" if url else None),
                        config=config)


def write_bytes_atomic(uri: str, data: bytes, endpoint: str = "") -> None:
    """Write ``data`` to ``uri`` so that readers see either nothing or the whole object.

    Local: write ``<name>.tmp-<random>`` in the same directory, fsync, ``os.replace``.
    S3: one ``PutObject`` (an object becomes visible only when its PUT completes).
    """
    if is_s3(uri):
        parsed = urlparse(uri)
        boto3_client(endpoint).put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        return
    path = resolve_filesystem(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole content of ``path`` on ``fs``."""
    with fs.open_input_stream(path) as fh:
        return fh.read()


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """True if ``path`` is an existing file on ``fs``."""
    return fs.get_file_info(path).type == pafs.FileType.File


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


def write_manifest(manifest: Manifest, endpoint: str = "") -> None:
    """Write ``manifest.root/manifest.json`` atomically."""
    write_bytes_atomic(join_uri(manifest.root, MANIFEST_NAME), manifest.to_json().encode(), endpoint)
