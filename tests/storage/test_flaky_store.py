"""The object-store fault proxy: requests and responses pass unchanged (chunked and aws-chunked uploads,
Content-Length, compressed bodies, HEAD), s3fs works byte-exact through it, injected 503s and 500s are
retried by s3fs/botocore, a delay only slows things down; and which failures s3fs does not retry."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .flaky_store import FlakyStore

MiB = 1024**2


class Echo:
    """An upstream that records each request as it arrived (headers, raw body, chunked or not)."""

    GZ = gzip.compress(b"compressed " * 1000)

    def __init__(self) -> None:
        self.seen: list[dict] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> tuple[bytes, bool]:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while (n := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        out += self.rfile.read(n)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                        pass
                    return out, True
                return self.rfile.read(int(self.headers.get("Content-Length") or 0)), False

            def _handle(self) -> None:
                body, chunked = self._body()
                echo.seen.append({"method": self.command, "path": self.path, "headers": self.headers.items(),
                                  "body": body, "chunked": chunked})
                if self.path.endswith("/gzip"):
                    payload, extra = Echo.GZ, {"Content-Encoding": "gzip", "ETag": '"abc"', "x-amz-meta-Mixed": "Case"}
                else:
                    payload, extra = json.dumps({"n": len(body)}).encode(), {"Content-Type": "application/json"}
                self.send_response(200)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "12345" if self.command == "HEAD" else str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def aws_chunked(payload: bytes, chunk: int = 64 * 1024) -> bytes:
    """`STREAMING-UNSIGNED-PAYLOAD-TRAILER` body, as botocore sends over TLS: hex-size chunks, then a checksum trailer."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + chunk]), payload[i:i + chunk])
                   for i in range(0, len(payload), chunk))
    return out + b"0\r\nx-amz-checksum-sha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\r\n\r\n"


def exchange(port: int, method: str, path: str, body=None, headers: dict | None = None, chunked: bool = False):
    """One request with http.client; the response as (status, headers without Date, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    r = conn.getresponse()
    out = r.status, sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() != "date"), r.read()
    conn.close()
    return out


def test_requests_and_responses_pass_unchanged():
    """Each request goes to the upstream directly and through the proxy: the upstream sees the same
    request (the Host header aside) and the client the same response."""
    echo = Echo()
    upstream_port = echo.server.server_address[1]
    body, parts, payload = os.urandom(3 * MiB + 7), [os.urandom(100_000) for _ in range(5)], os.urandom(200_000)
    raw = aws_chunked(payload)
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                               "SignedHeaders=host;x-amz-date, Signature=0123abcd",
              "x-amz-content-sha256": hashlib.sha256(body).hexdigest(), "x-amz-date": "20260101T000000Z",
              "x-amz-meta-Mixed": "Case", "Content-Length": str(len(body))}
    cases = [
        ("PUT", "/bkt/a%20key/%E2%9C%93?partNumber=1&uploadId=x%2By", body, signed, False),  # raw path, query
        ("PUT", "/bkt/streamed", parts, {}, True),  # unknown length: chunked on both legs
        ("PUT", "/bkt/awschunked", raw, {  # aws-chunked: bytes like any other, same length and encoding headers
            "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(payload)),
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "x-amz-trailer": "x-amz-checksum-sha256",
            "Content-Length": str(len(raw))}, False),
        ("GET", "/bkt/gzip", None, {"Accept-Encoding": "gzip"}, False),  # stays compressed
        ("HEAD", "/bkt/obj", None, {}, False),  # Content-Length of the object, no body
        ("DELETE", "/bkt/obj", None, {}, False),
    ]
    try:
        with FlakyStore(echo.url) as proxy:
            for method, path, data, headers, chunked in cases:
                direct = exchange(upstream_port, method, path, iter(data) if chunked else data, headers, chunked)
                there = echo.seen[-1]
                proxied = exchange(proxy.port, method, path, iter(data) if chunked else data, headers, chunked)
                here = echo.seen[-1]
                assert proxied == direct, (method, path)
                assert here["path"] == there["path"] == path and here["body"] == there["body"]
                assert here["chunked"] == there["chunked"] == chunked
                same = [(k.lower(), v) for k, v in here["headers"] if k.lower() != "host"]
                if data is None and method not in ("GET", "HEAD"):  # aiohttp's client says so: the same message
                    same.remove(("content-length", "0"))
                assert sorted(same) == sorted((k.lower(), v) for k, v in there["headers"] if k.lower() != "host")
                assert dict(here["headers"])["Host"] == f"127.0.0.1:{proxy.port}"  # as the client sent it
            assert echo.seen[1]["body"] == body and echo.seen[3]["body"] == b"".join(parts)
            assert echo.seen[5]["body"] == raw and proxied[0] == 200
            assert proxy.counts["requests"] == len(cases) and proxy.injected == 0
    finally:
        echo.close()


def test_aws_chunked_upload_reaches_the_store_decoded(flaky_s3, s3_bucket):
    import s3fs

    payload = os.urandom(300_000)
    raw = aws_chunked(payload)
    conn = http.client.HTTPConnection("127.0.0.1", flaky_s3.port, timeout=30)
    conn.request("PUT", f"/{s3_bucket[5:]}/chunked.bin", body=raw, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host, Signature=00", "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "x-amz-trailer": "x-amz-checksum-sha256",
        "x-amz-decoded-content-length": str(len(payload)), "Content-Length": str(len(raw))})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    conn.close()
    assert s3fs.S3FileSystem().cat(f"{s3_bucket}/chunked.bin") == payload


def write_and_read(url: str, fs=None) -> None:
    """A 10 MiB object in one PUT, a 12 MiB one in 5 MiB parts (multipart upload), a few small ones:
    written, listed, sized and read back byte-exact."""
    import fsspec

    big, multi = os.urandom(10 * MiB), os.urandom(12 * MiB)
    small = {f"{url}/small/{i}.txt": f"row {i}\n".encode() * (i + 1) for i in range(4)}
    with fsspec.open(f"{url}/big.bin", "wb") as f:
        f.write(big)
    fs = fs or fsspec.filesystem("s3")
    with fs.open(f"{url}/multi.bin", "wb", block_size=5 * MiB) as f:
        for i in range(0, len(multi), MiB):
            f.write(multi[i:i + MiB])
    for path, data in small.items():
        fs.pipe(path, data)
    fs.invalidate_cache()
    assert sorted(fs.ls(f"{url}/small")) == sorted(p[5:] for p in small)
    assert fs.info(f"{url}/big.bin")["size"] == len(big)
    with fsspec.open(f"{url}/big.bin", "rb") as f:
        assert f.read() == big
    with fsspec.open(f"{url}/multi.bin", "rb") as f:
        assert f.read() == multi
    assert fs.cat(list(small)) == {p[5:]: data for p, data in small.items()}


def test_s3fs_through_the_proxy_without_faults(flaky_s3, s3_bucket):
    write_and_read(s3_bucket)
    assert flaky_s3.counts["requests"] >= 15 and flaky_s3.injected == 0  # it all went through the proxy
    methods = {m for m, _, _ in flaky_s3.log}
    assert {"PUT", "POST", "GET", "HEAD"} <= methods


@pytest.mark.parametrize("status", [503, 500])
def test_every_third_request_fails_and_s3fs_retries(flaky_s3, s3_bucket, status):
    flaky_s3.set(fail_every=3, status=status)
    write_and_read(s3_bucket)
    c = flaky_s3.counts
    assert flaky_s3.injected >= 5 and c["failed PUT"] > 0 and c["failed GET"] > 0, c
    assert flaky_s3.injected == c["requests"] // 3


def test_a_fraction_of_requests_fails_and_s3fs_retries(flaky_s3, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    flaky_s3.set(fail_rate=0.3, seed=0)  # a seed whose failures come one at a time: short backoffs
    data = {f"{s3_bucket}/r/{i}": os.urandom(1000 + i) for i in range(8)}
    for path, blob in data.items():
        fs.pipe(path, blob)
    assert [fs.cat(p) for p in data] == list(data.values())
    assert 0 < flaky_s3.injected < flaky_s3.counts["matched"] == flaky_s3.counts["requests"]


def test_a_delay_slows_down_and_breaks_nothing(flaky_s3, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe(f"{s3_bucket}/warm", b"x")  # connections and the bucket's region known
    t = time.monotonic()
    fs.pipe({f"{s3_bucket}/d/{i}": b"%d" % i for i in range(3)})
    fast = time.monotonic() - t
    flaky_s3.set(delay_ms=300, methods={"PUT"})
    t = time.monotonic()
    for i in range(3):
        fs.pipe(f"{s3_bucket}/slow/{i}", b"%d" % i)
    slow = time.monotonic() - t
    assert slow >= 0.9 > fast and flaky_s3.counts["delayed"] == 3 and flaky_s3.injected == 0
    flaky_s3.set(delay_ms=200)
    assert [fs.cat(f"{s3_bucket}/slow/{i}") for i in range(3)] == [b"0", b"1", b"2"]


def test_which_failures_s3fs_retries_on_its_own(flaky_s3, s3_bucket):
    """botocore retries 500/502/503/504 and throttling codes (default: legacy mode, 5 attempts in
    all); when botocore gives up, s3fs tries again (`S3FileSystem.retries`, 5) only if the message
    says SlowDown / reduce your request rate, and a HEAD's error has no body, so no such message.
    Here botocore has 2 attempts in all (`total_max_attempts`; `max_attempts` counts the retries
    alone) and 2 requests in a row fail:"""
    import s3fs

    def fs_with(attempts: int):
        return s3fs.S3FileSystem(skip_instance_cache=True,
                                 config_kwargs={"retries": {"total_max_attempts": attempts, "mode": "standard"}})

    fs, path = fs_with(2), f"{s3_bucket}/obj"
    fs.pipe(path, b"0123456789")
    flaky_s3.set(fail_count=2, status=503, methods={"GET"})  # SlowDown with its XML body: s3fs tries again
    assert fs.cat_file(path, start=0, end=4) == b"0123" and flaky_s3.counts["failed GET"] == 2
    flaky_s3.set(fail_count=2, status=500, methods={"GET"})  # InternalError: botocore's attempts only
    with pytest.raises(OSError, match="internal error"):
        fs.cat_file(path, start=0, end=4)
    flaky_s3.set(fail_count=2, status=503, methods={"HEAD"})  # 503 to a HEAD: no body, code "503"
    with pytest.raises(OSError, match="Service Unavailable"):
        fs.info(path, refresh=True)

    fs = fs_with(3)  # one more botocore attempt, and both pass
    flaky_s3.set(fail_count=2, status=500)
    assert fs.cat_file(path, start=0, end=4) == b"0123"
    flaky_s3.set(fail_count=2, status=503, methods={"HEAD"})
    assert fs.info(path, refresh=True)["size"] == 10
