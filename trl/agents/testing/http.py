"""`JSONHandler`: the base of the small stdlib HTTP servers the test doubles run (stand-in replica, scripted model).

It answers JSON with a length (`send_json`), sends headers and body without Nagle's delay, and logs nothing per
request. Not here: routing (each double maps its own paths) or anything a real server (uvicorn) does beyond that.
"""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any


class JSONHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # headers and body leave in two writes: without this, Nagle's algorithm holds the body until the client's
        # delayed ACK (40 ms per call), which a real vLLM server (uvicorn) does not pay
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # one line per request would drown the test output

    def read_json(self) -> Any:
        """The request's JSON body (`{}` when it has none); `json.JSONDecodeError` when it is not JSON."""
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
