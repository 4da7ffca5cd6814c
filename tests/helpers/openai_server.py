"""A real OpenAI-compatible chat-completions server for tests: a tiny Qwen2.5-VL on 127.0.0.1.

``python tests/helpers/openai_server.py VLM_DIR PORT [--mode ok|error500|slow|nonsense]`` answers
``POST /v1/chat/completions`` (messages with a base64 image data URL and text, greedy) with the
local runtime's own answer, so a test can compare the remote path with the local one.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def main() -> None:
    vlm_dir, port = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--mode" else "ok"
    from vlmsam.vlm.runtime import VlmRuntime

    vlm = VlmRuntime.load(vlm_dir, dtype="fp32", device="cpu")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: dict | str) -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length))
            if mode == "error500":
                return self._send(500, {"error": {"message": "boom"}})
            if mode == "slow":
                time.sleep(30)
            if mode == "nonsense":
                return self._send(200, {"hello": "world"})
            turns, image = [], None
            for message in request["messages"]:
                if message["role"] == "user":
                    text = ""
                    for part in message["content"]:
                        if part["type"] == "image_url":
                            raw = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                            image = Image.open(io.BytesIO(raw)).convert("RGB")
                        else:
                            text += part["text"]
                    turns.append((text, None))
                else:
                    turns[-1] = (turns[-1][0], message["content"])
            answer = vlm.chat_many(vlm.encode_image(image), [turns], max_new_tokens=request.get("max_tokens", 16))[0]
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": answer}}],
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
