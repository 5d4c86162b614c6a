"""While the first model loads, the port already answers with a page that shows the progress."""

import threading
import time

import httpx
import pytest

from tests.serving import free_port, start_server

pytestmark = pytest.mark.server


def test_a_first_start_shows_loading_progress_then_the_playground(tmp_path):
    # An empty cache forces the ~20 s GGUF conversion, long enough to see the loading page.
    seen = []

    def watch(url: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url, timeout=2)
                seen.append((r.status_code, r.text))
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    port = free_port()
    watcher = threading.Thread(target=watch, args=(f"http://127.0.0.1:{port}/",))
    watcher.start()
    with start_server(env={"PLAYGROUND_CACHE": str(tmp_path)}, port=port) as server:
        watcher.join(timeout=130)
        api = httpx.get(server.api + "/models", timeout=10)
    loading = [text for status, text in seen if status == 503]
    assert loading, "no loading page was served while the model converted"
    assert "Loading the model" in loading[-1] and "converting the embedded GGUF" in loading[-1]
    assert seen[-1][0] == 200 and api.status_code == 200
