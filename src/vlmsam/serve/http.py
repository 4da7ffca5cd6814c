"""uvicorn's HTTP/1.1 protocol with malformed requests answered in the API's error model.

A request h11 cannot parse (a bad ``Content-Length``, a broken request line) never reaches the app;
uvicorn answers it with a plain-text 400. This subclass answers the same 400 as JSON with a request id,
logged like every other error.
"""

from __future__ import annotations

import json
import logging
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("vlmsam.serve")


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        request_id = uuid.uuid4().hex[:12]
        log.warning("request %s: 400 %s", request_id, msg)
        body = json.dumps({"error": f"malformed HTTP request ({msg.rstrip('.')}); check the request line and headers",
                           "request_id": request_id}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode()), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
