"""Shared fixtures: an S3 server on loopback (moto, server mode), a local Ray, video helpers.

    s3_server   session: moto ThreadedMotoServer on 127.0.0.1 (port 0: bound by the server itself); sets the standard AWS
                variables (test credentials, region, AWS_ENDPOINT_URL) for this process and the
                processes it starts (Ray workers included: ray_local depends on it)
    s3_bucket   a fresh bucket per test: "s3://<name>"
    ray_local   session: ray.init(num_cpus=6) (oversubscribed on purpose, see NOTES-ray.md)
    closed_port a loopback port on which connections are refused (bound here, never listened on)
    ray_head    module: a `ray start --head` cluster on loopback (job server, dashboard) for the
                end-to-end tests of the entry points (tests/pipeline_helpers.py)
    rehearsal   module: the shared-nothing rehearsal cluster (dynamonet.cluster.rehearsal): a head,
                a decode node and a trainer node, each in its own mount namespace with private tmpfs,
                and its own moto server as the only shared medium

Helpers to write small real videos and dataset layouts live in tests/helpers.py.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # `import dynamonet` from a checkout
sys.path.insert(0, str(Path(__file__).parent))  # `import helpers`


@dataclass
class S3Server:
    """A running moto server: ``endpoint`` is ``http://127.0.0.1:<port>``."""

    endpoint: str
    port: int

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name; returns ``s3://<name>``."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, uri: str) -> list[str]:
        """Object keys under ``s3://bucket/prefix``."""
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks, the server binds
    server.start()
    port = server.get_host_and_port()[1]
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN")}
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield S3Server(endpoint=endpoint, port=port)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture(scope="session")
def ray_local(s3_server: S3Server) -> Iterator[object]:
    """A local Ray for the whole session (workers inherit the S3 variables set above)."""
    import ray

    started = not ray.is_initialized()
    if started:
        # address="local": never attach to the `ray start` head of the pipeline tests
        ray.init(address="local", num_cpus=6, include_dashboard=True, log_to_driver=True, configure_logging=False,
                 object_store_memory=1 << 30)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(items: list) -> None:
    """The rehearsal tests first: its three nodes then have the machine to themselves (the session's
    other Ray instances start later), and the cluster is gone before they start."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("rehearsal") else 1)


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[object]:
    """One rehearsal cluster for the tests of a module (it takes ~10 s to start)."""
    from dynamonet.cluster import rehearsal as reh

    problem = reh.check_supported()
    if problem:
        pytest.skip(f"rehearsal cluster: {problem}")
    cluster = reh.up(f"/var/tmp/dynamonet-rehearsal-{uuid.uuid4().hex[:8]}")
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by this process and never listened on: connections to it are refused,
    and no other process can take it while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[object]:
    from pipeline_helpers import ray_head_fixture

    yield from ray_head_fixture()
