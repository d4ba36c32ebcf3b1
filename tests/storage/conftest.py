"""`flaky_s3`: the S3 test server behind a fault-injecting proxy, for this process's S3 clients."""

from __future__ import annotations

import pytest

from .flaky_store import FlakyStore


@pytest.fixture
def flaky_s3(s3_server):
    """A `FlakyStore` in front of the session's S3 server, with no faults until `set(...)`; while the
    test runs, AWS_ENDPOINT_URL(_S3) of this process (and of the processes it starts) name the proxy,
    and fsspec's cached filesystems are dropped, so s3fs / boto clients made from now on go through
    it. Afterwards the direct endpoint is back. Buckets: `s3_server.bucket()` or `s3_bucket`."""
    proxy = FlakyStore(s3_server.endpoint).start()
    s3_server.export(proxy.endpoint)
    try:
        yield proxy
    finally:
        s3_server.export(s3_server.endpoint)
        proxy.stop()
