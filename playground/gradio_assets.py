"""Gradio 6.31.0's frontend (pinned), fixed where it costs every page CPU for nothing: the app serves the
patched files in place of Gradio's own.

- An open page that does nothing costs nothing. While a page loads, Gradio shows a status tracker
  ("Loading...") whose elapsed-time timer is a requestAnimationFrame loop. The loop stops when its status
  leaves "pending", but the app's tracker is removed at that moment instead, so nothing ever stopped it:
  every open page ran a callback 60 times a second for as long as it stayed open. Measured: 8 idle pages
  kept 0.2 of a core busy (on a 2-core machine that a class's browsers share with the server), and a
  visitor's idle tab spent its laptop's battery. Now the loop also ends once its status is no longer
  "pending", which is when it ends for every tracker that stays on the page.
- An event's status messages cost a page what changed. See PATCHES.

A patched file keeps its name, so every module that imports it gets it; the route is declared before Gradio
is mounted, so it wins over Gradio's own /assets route. If an upgrade changes the code, the app refuses to
start (and a test fails) rather than serve a page that half works.
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
    # Each status message of any event pushed the loading status of every component any event had used,
    # changed or not, and each push walks the component tree and snapshots the component's props (and all a
    # layout block holds): measured, the largest part of a page's script time during a run. Pushed now only
    # where a field changed since that component's last push, which is all the trackers can show. (Gradio's
    # input validators push a status of their own past this method; the playground uses none.)
    "Blocks-D1GWYZdr.js": [(
        "async update_loading_stati_state(){await Promise.all(Object.entries(this.loading_stati.current)"
        ".map(([e,t])=>this.update_state_cb(Number(e),{loading_status:t},!1)))}",
        "async update_loading_stati_state(){let s=this.pushed_stati||=new Map;"
        "await Promise.all(Object.entries(this.loading_stati.current).filter(([e,t])=>{let p=s.get(e);"
        "if(p&&Object.keys(p).length===Object.keys(t).length&&Object.keys(t).every(k=>p[k]===t[k]))return!1;"
        "s.set(e,t);return!0}).map(([e,t])=>this.update_state_cb(Number(e),{loading_status:t},!1)))}",
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
