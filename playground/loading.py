"""A stand-in page served while the first model loads, so a browser shows progress, not a dead port.

Every path answers 503 with a Retry-After header (API clients and health checks wait, as for any
service that is starting) and a small page that reloads itself every two seconds, showing the latest
progress line; once the model is ready the real app takes the port over.
"""

from __future__ import annotations

import html
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Sampling Playground: loading</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3em; color: #0f172a">
<h1>Sampling Playground</h1><p id="loading">Loading the model… {elapsed} s</p>
<ul>{lines}</ul><p style="color:#64748b">This page reloads itself and becomes the playground when the model is ready.</p>
</body></html>"""


class LoadingPage:
    def __init__(self, host: str, port: int):
        self.lines: list[str] = []
        self.started = time.monotonic()
        app = Starlette(routes=[Route("/{path:path}", self._page, methods=["GET", "POST", "HEAD"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def _page(self, request: Request) -> HTMLResponse:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines)
        body = PAGE.format(elapsed=int(time.monotonic() - self.started), lines=items)
        return HTMLResponse(body, status_code=503, headers={"Retry-After": "2"})

    def __enter__(self) -> "LoadingPage":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # Free the port for the real app.
        self.server.should_exit = True
        self.thread.join(timeout=10)
