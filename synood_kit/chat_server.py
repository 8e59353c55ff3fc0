"""A minimal OpenAI-compatible ``/v1/chat/completions`` server around any prompting backend.

It lets the OpenAI backend be tested offline against the mini-world MLLM on loopback, and lets a notebook serve
a local MLLM the way vLLM or Ollama would. It understands the subset the kit sends: one user message with an
``image_url`` data URL (PNG/JPEG, base64) and a text part.

    server, url = serve_chat_completions(TransformersBackend("miniworld"))   # url = http://127.0.0.1:<port>/v1
    ...
    server.shutdown()
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

__all__ = ["serve_chat_completions"]


def _image_from_data_url(url: str) -> torch.Tensor:
    """Return a data URL's image as ``(3, H, W)`` in ``[0, 1]``, read by the kit's one image reader.

    Raises:
        ValueError: for anything but a base64 image data URL, or an image the reader refuses (``ImageLoadError``).
    """
    from .data import load_image

    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError("only base64 data URLs of images are accepted")
    return load_image(base64.b64decode(url.split(";base64,", 1)[1], validate=True))


def serve_chat_completions(backend, host: str = "127.0.0.1", port: int = 0, model_name: str = "miniworld"):
    """Start a threaded server on ``host:port`` (0 = any free port); return ``(server, base_url)``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: requests carry images, not worth logging
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                parts = body["messages"][-1]["content"]
                text = " ".join(p["text"] for p in parts if p.get("type") == "text")
                urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
                if len(urls) != 1:
                    raise ValueError(f"expected one image per request, got {len(urls)}")
                image = _image_from_data_url(urls[0])
            except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            with lock:
                answer = backend.ask(image[None], text)[0]
            self._send(
                200,
                {
                    "id": f"chatcmpl-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", model_name),
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}
                    ],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                },
            )

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/v1"
