"""Gradio's frontend as the app serves it, fixed (playground/gradio_assets.py): an open page that does nothing
costs nothing, and a status message costs a page what changed."""

from __future__ import annotations

import httpx
import pytest

from playground import gradio_assets
from tests.browser import open_page

NAME = "statustracker-DQF-KcRT.js"

# Counts the page's animation-frame requests from its first script on (Gradio keeps its own reference to
# requestAnimationFrame, taken when its modules load).
COUNT_FRAMES_JS = """(() => { const request = window.requestAnimationFrame.bind(window); window.__frames = 0;
  window.requestAnimationFrame = (cb) => { window.__frames++; return request(cb); }; })()"""


def test_the_patch_applies_to_the_installed_gradio():
    for name, patches in gradio_assets.PATCHES.items():
        text = gradio_assets.patched(name).decode()
        assert all(ours in text and theirs not in text for theirs, ours in patches), name


def test_a_file_gradio_changed_stops_the_app_rather_than_a_page(monkeypatch, tmp_path):
    (tmp_path / NAME).write_text("export const x = 1;")
    monkeypatch.setattr(gradio_assets, "ASSETS", tmp_path)
    gradio_assets.patched.cache_clear()
    try:
        with pytest.raises(gradio_assets.PatchMissing, match="found 0 times"):
            gradio_assets.router()
    finally:
        gradio_assets.patched.cache_clear()


@pytest.mark.server
@pytest.mark.parametrize("name", list(gradio_assets.PATCHES))
def test_the_app_serves_each_fixed_file_under_gradios_name(server, name):
    response = httpx.get(f"{server.url}/assets/{name}", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert all(ours in response.text for _, ours in gradio_assets.PATCHES[name])
    again = httpx.get(f"{server.url}/assets/{name}", headers={"if-none-match": response.headers["etag"]}, timeout=30)
    assert again.status_code == 304


@pytest.mark.browser
@pytest.mark.server
def test_an_open_page_that_does_nothing_requests_no_animation_frames(server):
    """Its start-up animations end within seconds. Before the fix, the loading tracker's timer went on
    asking for every frame (about 60 a second) for as long as the page stayed open."""
    with open_page(server.url, init_script=COUNT_FRAMES_JS) as page:
        seen = []
        for _ in range(12):
            before = page.evaluate("() => window.__frames")
            page.wait_for_timeout(1000)
            seen.append(page.evaluate("() => window.__frames") - before)
            if seen[-1] < 3:
                break
    assert seen[-1] < 3, f"animation frames requested in each second after start-up: {seen}"
