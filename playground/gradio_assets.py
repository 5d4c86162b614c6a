"""An open page that does nothing costs nothing: a fix of Gradio 6.31.0's frontend (pinned), served in place
of its own file.

Why: while a page loads, Gradio shows a status tracker ("Loading...") whose elapsed-time timer is a
requestAnimationFrame loop. The loop stops when its status leaves "pending", but the app's tracker is
removed at that moment instead, so nothing ever stops it: every open page ran a callback 60 times a second
for as long as it stayed open. Measured: 8 idle pages kept 0.2 of a core busy in Chromium (of the 2 cores
a small machine shares between the server and a class's browsers), and on a visitor's laptop an idle tab
spent its battery. The fix: the loop also ends once its status is no longer "pending", which is when it
stops for any tracker that stays on the page, so nothing else changes.

The patched file keeps its name, so every module that imports it gets it; the route is declared before
Gradio is mounted, so it wins over Gradio's own /assets route. A test fails if an upgrade changes the code.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import gradio
from fastapi import APIRouter, Request, Response

ASSETS = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"

# file -> [(Gradio's code, ours)]: each must occur exactly once in the file.
PATCHES: dict[str, list[tuple[str, str]]] = {
    "statustracker-DQF-KcRT.js": [(
        "function ze(){me(()=>{F(Pe,(performance.now()-w(de))/1e3),W&&ze()})}",
        "function ze(){me(()=>{F(Pe,(performance.now()-w(de))/1e3),W&&o.status===`pending`&&ze()})}",
    )],
}


class PatchMissing(RuntimeError):
    """Gradio's file is not the one this patch was made for (an upgrade): see the module docstring."""


@functools.cache
def patched(name: str) -> bytes:
    text = (ASSETS / name).read_text(encoding="utf-8")
    for theirs, ours in PATCHES[name]:
        if text.count(theirs) != 1:
            raise PatchMissing(f"{name}: Gradio's code to patch was found {text.count(theirs)} times, not once")
        text = text.replace(theirs, ours)
    return text.encode()


def router() -> APIRouter:
    r = APIRouter()
    for name in PATCHES:
        body = patched(name)  # at start-up: a missing patch stops the app, not a page
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

        async def asset(request: Request, body: bytes = body, etag: str = etag) -> Response:
            headers = {"ETag": etag, "Cache-Control": "max-age=0, must-revalidate"}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return Response(body, media_type="text/javascript", headers=headers)

        r.add_api_route(f"/assets/{name}", asset, methods=["GET"], include_in_schema=False)
    return r
