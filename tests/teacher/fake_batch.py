"""A local fake of the OpenAI Batch endpoints (files + batches), written for the tests.

It stores uploaded files, and runs each batch line against a real OpenAI-compatible server
(the local llama.cpp teacher, which checks the API key) in a background thread, with the
credentials the batch was created with; other chat completions and model lists pass through. `fail_first` custom ids are answered
with a 500 the first time (to exercise the next-round retry) and `reject` ids with a 400.
"""

from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FakeBatchAPI:
    def __init__(self, upstream: str, fail_first: int = 1, reject: int = 0):
        self.upstream = upstream.rstrip("/")
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.fail_first, self.reject = fail_first, reject
        self.lines_run = 0
        self._failed_once: set[str] = set()
        self.rejected: set[str] = set()
        self._lock = threading.Lock()
        api = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, obj, status=200):
                b = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.endswith("/chat/completions"):  # as OpenAI: the online API beside the batch one
                    r = httpx.post(api.upstream + "/chat/completions", content=body, headers=api.auth(self.headers),
                                   timeout=120)
                    return self._json(r.json(), r.status_code)
                if self.path.endswith("/files"):
                    msg = BytesParser(policy=HTTP).parsebytes(
                        b"content-type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + body)
                    data = next(p.get_payload(decode=True) for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file")
                    return self._json(api._file(data, "batch"))
                if self.path.endswith("/batches"):
                    return self._json(api._create(json.loads(body), api.auth(self.headers)))
                self._json({"error": {"message": "not found"}}, 404)

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if parts[-1] == "models":  # the factory probes endpoints before work starts
                    r = httpx.get(api.upstream + "/models", headers=api.auth(self.headers))
                    return self._json(r.json(), r.status_code)
                if len(parts) == 3 and parts[1] == "batches" and parts[2] in api.batches:
                    return self._json(api.batches[parts[2]])
                if len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                    b = api.files[parts[2]]
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(len(b)))
                    self.end_headers()
                    return self.wfile.write(b)
                self._json({"error": {"message": "not found"}}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _file(self, data: bytes, purpose: str) -> dict:
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": f"{fid}.jsonl", "purpose": purpose, "status": "processed"}

    @staticmethod
    def auth(headers) -> dict[str, str]:
        return {"authorization": headers["authorization"]} if headers.get("authorization") else {}

    def _create(self, req: dict, auth: dict[str, str]) -> dict:
        bid = f"batch_{len(self.batches) + 1}"
        b = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
             "completion_window": req["completion_window"], "status": "in_progress", "created_at": int(time.time()),
             "output_file_id": None, "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        self.batches[bid] = b
        threading.Thread(target=self._work, args=(b, auth), daemon=True).start()
        return b

    def _work(self, b: dict, auth: dict[str, str]) -> None:
        out, err = [], []
        with httpx.Client(timeout=120) as http:
            for line in self.files[b["input_file_id"]].decode().splitlines():
                req = json.loads(line)
                cid = req["custom_id"]
                if self.reject > 0:
                    self.reject -= 1
                    self.rejected.add(cid)
                    err.append({"id": f"r-{cid}", "custom_id": cid, "response": {"status_code": 400, "body": {"error": {"message": "bad request (injected)"}}}})
                    continue
                if self.fail_first and cid not in self._failed_once:
                    self._failed_once.add(cid)
                    self.fail_first -= 1
                    err.append({"id": f"r-{cid}", "custom_id": cid, "response": {"status_code": 500, "body": {"error": {"message": "injected"}}}})
                    continue
                r = http.post(self.upstream + req["url"].removeprefix("/v1"), json=req["body"], headers=auth)
                self.lines_run += 1
                out.append({"id": f"r-{cid}", "custom_id": cid, "response": {"status_code": r.status_code, "body": r.json()}})
        b["output_file_id"] = self._file("\n".join(json.dumps(o) for o in out).encode(), "batch_output")["id"]
        if err:
            b["error_file_id"] = self._file("\n".join(json.dumps(o) for o in err).encode(), "batch_output")["id"]
        b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        b["status"] = "completed"

    def __enter__(self) -> "FakeBatchAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
