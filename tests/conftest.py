import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def lm():
    """The real embedded SmolLM2 model, loaded once (from the converted cache after the first run)."""
    from engine.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def host(lm):
    """A ModelHost on `lm` for the UI handler tests; its decode loop ends with the module."""
    from playground.models import ModelHost

    host = ModelHost(lm)
    yield host
    host.scheduler().close()


@pytest.fixture(scope="session")
def server():
    """The app (UI + API) as a subprocess on a free loopback port, without an API key."""
    from tests.serving import start_server

    with start_server() as s:
        yield s


@pytest.fixture
def closes_schedulers(monkeypatch):
    """Every scheduler a test starts is closed when it ends, passed or failed."""
    from engine.scheduler import Scheduler

    made = []
    original = Scheduler.__init__

    def init(self, *args, **kw):
        original(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(Scheduler, "__init__", init)
    yield
    for scheduler in made:
        scheduler.close()
