"""A real OpenAI-compatible chat-completions server on 127.0.0.1 that answers from a script.

``python tests/helpers/scripted_vlm_server.py SCRIPT.json LOG.jsonl PORT`` answers the i-th
``POST /v1/chat/completions`` with ``SCRIPT[i]`` (the last entry once the script runs out; with ``--cycle``,
the script again from its start; with ``--policy``, SCRIPT is ``[[needle, reply], ...]`` and the reply is
the first whose needle is in the last message's text, the same answer to the same conversation whatever
the order of the calls) and appends
what it received to LOG.jsonl: per message its role, its text and how many images it held (each image
decoded, so a broken data URL fails the request), and the Authorization header. The VLM is the only thing scripted: the agent loop,
SAM 3 and the rendering under test are real.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


def call(name: str, **parameters) -> str:
    """A scripted reply: a tool call as the agent's protocol writes it, after a line of thinking."""
    return f"<think>thinking about {name}</think>\n<tool>{json.dumps({'name': name, 'parameters': parameters})}</tool>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: list, folder: Path, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    """This server, answering ``script`` (written to ``folder``) with ``flags`` (``--cycle``, ``--policy``):
    its process, its ``/v1`` URL and its log, once it is ready."""
    (folder / "script.json").write_text(json.dumps(script))
    log, port = folder / "log.jsonl", free_port()
    proc = subprocess.Popen([sys.executable, __file__, str(folder / "script.json"), str(log), str(port), *flags],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}/v1", log


def main() -> None:
    script = json.loads(open(sys.argv[1]).read())
    log_path, port = sys.argv[2], int(sys.argv[3])
    cycle, policy = "--cycle" in sys.argv[4:], "--policy" in sys.argv[4:]
    served = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            seen = []
            for m in request["messages"]:
                content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
                images = 0
                for part in content:
                    if part["type"] == "image_url":
                        raw = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                        Image.open(io.BytesIO(raw)).convert("RGB")
                        images += 1
                seen.append({"role": m["role"], "images": images,
                             "text": "".join(p.get("text", "") for p in content if p["type"] == "text")})
            with open(log_path, "a") as log:
                log.write(json.dumps({"messages": seen, "max_tokens": request.get("max_tokens"),
                                      "authorization": self.headers.get("Authorization")}) + "\n")
            if policy:
                answer = next(reply for needle, reply in script if needle in seen[-1]["text"])
            else:
                answer = script[served[0] % len(script) if cycle else min(served[0], len(script) - 1)]
            served[0] += 1
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": answer}}],
                               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
