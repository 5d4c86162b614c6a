"""The OpenAI-compatible HTTP API (/v1), served by the same process as the UI."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import FastAPI

from playground.models import ModelHost


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None = None
    open_to_remote: bool = False  # without a key, serve clients beyond loopback too
    max_batch_tokens: int = 65536  # cap on n * max_tokens per request
    max_in_flight: int = 8  # cap on requests generating at once


def create_api(host: ModelHost, settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="Sampling Playground API")

    @app.get("/v1/models")
    def list_models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": int(time.time()), "owned_by": "local"} for name in host.names()],
        }

    return app
