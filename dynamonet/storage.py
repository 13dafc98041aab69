"""Object storage: one home for every path the project reads or writes, local or ``s3://``.

Shards (``data/``), run storage (checkpoints, ``result.json``, TensorBoard events), sweeps and
evaluation reports all go through :mod:`pyarrow.fs`, the same layer Ray Train and Tune use, so a
local directory and a bucket take the same code path:

    local path | file://... | s3://bucket/prefix[?endpoint_override=host:port&scheme=http]
        │ resolve_filesystem
        ▼
    (pyarrow FileSystem, path)   LocalFileSystem | RetryingS3FileSystem (retries survive pickling)
        │ read_bytes / write_bytes_atomic / upload_dir / exists ...
        │ ray_storage: (storage_path, storage_filesystem) in the form RunConfig wants
        ▼
    shards, runs, sweeps

S3 endpoint: pyarrow's ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL``, so it is resolved here
(explicit argument > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` > AWS itself); a bare
``host:port`` means http on loopback and https elsewhere. Credentials come from the standard AWS
chain (environment, profile, instance role). Retries are the clients' own (pyarrow
``retry_strategy`` with timeouts, botocore ``retries``): no retry loop here. pyarrow drops
``retry_strategy`` when an ``S3FileSystem`` is pickled (its ``__reduce__`` omits it), which would
strip the retries from every Ray task; :class:`RetryingS3FileSystem` pickles its full settings.

A run lives at ``<run.storage_path>/<run.name>/`` (docs/training.md):

    dynamonet_config.yaml     the resolved config (checked when the run resumes)
    checkpoint_epochNNNN/     the last ``run.keep_checkpoints`` checkpoints (Ray's CheckpointConfig)
    checkpoint_best/          a copy of the best checkpoint by ``val/top1`` (best.json says which)
    result.json               final metrics, written by the driver
    tensorboard/              event files (copied here after every report for s3:// runs)
    eval/<split>/             reports of evaluate.py
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow.fs as pafs

CHECKPOINT_RE = re.compile(r"^checkpoint_epoch(\d+)$")
BEST_CHECKPOINT = "checkpoint_best"

# Retry policy for streaming reads and ingest writes: AWS "standard" mode (exponential backoff
# with jitter, each wait capped at 20 s). 10 attempts ride out ~75 s of unreachable endpoint.
S3_MAX_ATTEMPTS = 10
S3_CONNECT_TIMEOUT = 5.0
S3_REQUEST_TIMEOUT = 60.0
# Driver-side probe (open_dataset): one attempt, short timeouts, so a wrong endpoint fails fast.
PROBE_CONNECT_TIMEOUT = 2.0
PROBE_REQUEST_TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------

def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/...`` URIs."""
    return uri.startswith("s3://")


def is_remote(uri: str) -> bool:
    """True for ``s3://`` (and other non-local) URIs."""
    return "://" in uri and not uri.startswith("file://")


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


# --------------------------------------------------------------------------------------------
# Endpoints and filesystems
# --------------------------------------------------------------------------------------------

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
    :func:`s3_settings` (``max_attempts``, timeouts). Other URL schemes are refused.
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


def ray_storage(uri: str, endpoint: str = "") -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train's and Tune's ``RunConfig``.

    With a custom filesystem (our endpoint and retries) Ray wants the path in the filesystem's own
    form, ``bucket/prefix``, not the ``s3://`` URI (``Path("s3://b/x")`` would become ``s3:/b/x``).
    Local paths are made absolute (Ray refuses relative ones) and need no filesystem.
    """
    fs, path = resolve_filesystem(uri, endpoint)
    return (path, fs) if is_s3(uri) else (path, None)


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


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------

def exists(fs: pafs.FileSystem, path: str) -> bool:
    """True if anything (file or directory) is at ``path``."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """True if ``path`` is an existing file on ``fs``."""
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole content of ``path`` on ``fs``."""
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small file: temp file + rename on local disk; one PUT on S3 (PUTs are atomic)."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
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
        return
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def write_bytes_atomic(uri: str, data: bytes, endpoint: str = "") -> None:
    """Write ``data`` to ``uri`` so that readers see either nothing or the whole object.

    Local: a temp file in the same directory, fsync, ``os.replace``. S3: one ``PutObject`` with
    boto3 (an object becomes visible only when its PUT completes).
    """
    if is_s3(uri):
        parsed = urlparse(uri)
        boto3_client(endpoint).put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        return
    fs, path = resolve_filesystem(uri)
    write_bytes(fs, path, data)


def upload_dir(local_dir: str, uri: str, endpoint: str = "") -> None:
    """Copy a local directory's files to ``uri`` (whole files: S3 objects are replaced, never appended)."""
    fs, path = resolve_filesystem(uri, endpoint)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)  # a local destination needs its directories (S3 has none)
    pafs.copy_files(os.path.abspath(local_dir), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def copy_file(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Copy within one filesystem (a server-side copy on S3)."""
    fs.create_dir(posixpath.dirname(dst), recursive=True)
    fs.copy_file(src, dst)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------

def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> list[tuple[int, str]]:
    """``[(epoch, path)]`` of the ``checkpoint_epochNNNN`` checkpoints of a run, sorted by epoch."""
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
