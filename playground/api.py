"""The OpenAI-compatible HTTP API (/v1), served by the same process as the UI.

    GET  /v1/models              the loaded models
    POST /v1/chat/completions    every sampling knob at the top level; stream: true for server-sent events
    POST /v1/completions         vLLM's completions subset, and POST /tokenize, /detokenize (playground/api_completions.py)

Every error, bad input included, answers in OpenAI's shape {"error": {message, type, param, code}}:
400 for bad input (naming the field), 401 for a missing or wrong key, 403 for a remote client of a server
without a key, 404 for an unknown model or path, 429 when the queue is full (with Retry-After) or a request
is larger than the server ever runs. Requests become jobs of the model's scheduler (engine/scheduler.py):
their rows share one decode loop with every other request and the UI's runs; a request that finds the
batch full waits in a queue that serves clients in turn and gets no error, only its answer once admitted.
A client is the API key on a server with a key, else the caller's IP address. A client that disconnects,
waiting or generating, is dropped within one step.

A request that fails while it runs fails alone (the others in its batch go on): 400 naming the parameter
for a bad value found only then, 500 for a bug. A stream that fails after its first chunk ends with one
event in the same error shape, then data: [DONE].
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.generator import Generation
from engine.knobs import ParamError
from engine.remote import RemoteError
from engine.scheduler import END, Refused, Scheduler
from playground.api_format import Meta
from playground.models import ModelHost
from playground.schema import ChatCompletionRequest, to_engine


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None = None
    open_to_remote: bool = False  # without a key, serve clients beyond loopback too
    max_logprobs: int = 20  # /v1/completions' cap on logprobs; -1: none (playground/api_completions.py)
    logprobs_mode: str = "raw_logprobs"  # which values its logprobs are (vLLM's --logprobs-mode)
    kv_store_bytes: int = 256 * 2**20  # each model's KV reuse store (engine/kvstore.py); 0: off
    off: str | None = None  # why the API answers 503 (on ZeroGPU: ZEROGPU_OFF); None: it serves


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    @property
    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def job_error(exc: Exception) -> ApiError:
    """What a request that failed while it ran gets: a bad value (ParamError) is 400 naming its parameter;
    anything else is a bug, 500."""
    if isinstance(exc, ParamError):
        return ApiError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, RemoteError):  # the inference server behind a remote model failed, not this request
        return ApiError(502, f"the remote model's server failed: {exc}", type="upstream_error")
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


# --- who may call /v1 ---------------------------------------------------------------------------------

def is_loopback(host: str | None) -> bool:
    if host == "testclient":  # Starlette's in-process test client
        return True
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or addr).is_loopback


def refusal(settings: ApiSettings, headers: Headers, client_host: str | None) -> ApiError | None:
    """Why this caller may not use /v1, or None when it may."""
    if settings.off:
        return ApiError(503, settings.off, type="server_error", code="api_off")
    if settings.api_key:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guessed key was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            return ApiError(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                            code="invalid_api_key")
    elif not settings.open_to_remote and not is_loopback(client_host):
        return ApiError(403, "This server's API answers only its own machine (loopback). Start it with "
                        "--api-key KEY (or PLAYGROUND_API_KEY) to let others in with that key, or --open-api.",
                        code="forbidden")
    return None


def client_of(settings: ApiSettings, headers: Headers, client_host: str | None) -> str:
    """Who is asking, for the scheduler's fair shares: the API key on a server with one (checked by
    V1Guard; only a digest is kept), else the caller's address."""
    if settings.api_key:
        token = headers.get("authorization", "").partition(" ")[2].strip()
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"ip:{client_host}"


# A ZeroGPU call charges the visitor whose Gradio request made it; an API call has none, so the Space's
# owner would pay for every caller (hub-docs, spaces-zerogpu.md).
ZEROGPU_OFF = ("The API is off on this ZeroGPU Space: an API call carries no visitor's Gradio request, so its GPU "
               "time would come from the Space's own quota. Use the page, or run the app yourself; the Space's "
               "owner can turn the API on with --zerogpu-api (or PLAYGROUND_ZEROGPU_API=1).")

GUARDED = ("/v1", "/tokenize", "/detokenize")  # and everything under /v1/


class V1Guard:
    """ASGI middleware: applies `refusal` to the API's paths only (GUARDED; the UI is Gradio's business), and
    before the body is read, so a caller without the key learns nothing about its request."""

    def __init__(self, app, settings: ApiSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] in GUARDED or scope["path"].startswith("/v1/")):
            client = scope.get("client")
            error = refusal(self.settings, Headers(scope=scope), client[0] if client else None)
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- the scheduler's steps on the event loop ------------------------------------------------------------

class Steps:
    """A job's steps, handed from the decode loop's thread to this event loop as they are made."""

    def __init__(self, scheduler: Scheduler, gen: Generation, client: str | None = None):
        self.gen = gen
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        try:
            scheduler.submit(gen, listener=self._put, client=client)
        except Refused as e:
            raise ApiError(429, e.message, type="requests" if e.retry else "tokens", param=e.param,
                           code="rate_limit_exceeded", headers={"Retry-After": "1"} if e.retry else None) from None

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop closed (server shutting down): nobody is listening
            pass

    async def next(self, timeout: float | None = None):
        """The next list of Steps; END after the last; None when nothing came within `timeout`."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self):
        while (item := await self.next()) is not END:
            yield item


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, allow_nan=False)}\n\n"


# --- errors --------------------------------------------------------------------------------------------

def _param_of(err: dict, body) -> str | None:
    """The field path, e.g. messages[0].content, from pydantic's error location. The location also holds
    the names of union members pydantic tried ('user', 'str', ...): keep only the parts that are places
    in the request body, and the last part of a 'missing' error (the field that is absent)."""
    loc = tuple(err.get("loc", ()))
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out, node = "", body
    for n, part in enumerate(parts):
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (err["type"] == "missing" and n == len(parts) - 1):
            continue
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    # Of a union's failed members, the one that got furthest into the value says the most.
    err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    if err["type"] == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}.")
    param = _param_of(err, exc.body)
    if param is None:
        return ApiError(400, "The request body must be a JSON object with at least 'messages'.")
    if err["type"] == "extra_forbidden":
        return ApiError(400, f"Unknown parameter {param!r}: see /openapi.json for the fields this API takes.",
                        param=param, code="unknown_parameter")
    if err["type"] == "missing":
        return ApiError(400, f"{param} is required.", param=param, code="missing_required_parameter")
    return ApiError(400, f"{param}: {err['msg']}.", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(ParamError)
    async def _param_error(request, exc: ParamError):
        return job_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        # Only a bug lands here (bad input is answered above); keep the shape clients parse.
        return job_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail), type="invalid_request_error", headers=exc.headers).response()


# --- routes --------------------------------------------------------------------------------------------

_ERRORS = {
    code: {"description": text, "content": {"application/json": {"example": {"error": {
        "message": text, "type": "invalid_request_error", "param": None, "code": None}}}}}
    for code, text in [(400, "bad input, naming the field and its allowed range"), (401, "missing or wrong API key"),
                       (403, "remote client of a server without a key"), (404, "unknown model"),
                       (429, "the queue is full (retry after Retry-After seconds), or the request is larger than the server runs")]
}


def create_api(host: ModelHost, settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="Sampling Playground API", description=__doc__)
    app.add_middleware(V1Guard, settings=settings)
    install_error_handlers(app)

    def model_card(name: str) -> dict:
        # max_model_len as vLLM's cards carry it: a client driving this server as a remote sizes its prompts by it.
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "local",
                "max_model_len": getattr(host.get(name), "context_length", None)}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [model_card(name) for name in host.names()]}

    @app.get("/v1/models/{model:path}", responses={404: _ERRORS[404]})
    def get_model(model: str):
        lookup(host, model)
        return model_card(model)

    @app.post("/v1/chat/completions", responses={
        200: {"description": "a chat.completion object, or with stream: true an event stream of chat.completion.chunk objects ending with data: [DONE]"},
        **{code: _ERRORS[code] for code in (400, 401, 403, 404, 429)},
    })
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        lm = lookup(host, body.model)

        def prepare():  # may refuse (ParamError): knobs, messages, tools, context, vocabulary, grammar
            chat = to_engine(body, lm)
            return chat, chat.generation()

        # Off the event loop: a long prompt's tokenizing or a large JSON schema's grammar takes a while.
        chat, gen = await run_in_threadpool(prepare)
        meta = Meta(chat, gen, bool(body.trace))
        client = request.client.host if request.client else None
        steps = Steps(host.scheduler(lm.name), gen, client_of(settings, request.headers, client))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(meta, steps, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while (item := await steps.next(timeout=0.5)) is not END:
                # Waiting in the queue or generating: a client that left is dropped either way.
                if await request.is_disconnected():
                    break
        finally:
            gen.stop()  # a no-op when the generation already ended; else it ends within one step
        return meta.completion()

    from playground.api_completions import install_completions

    install_completions(app, host, settings)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def unknown_path(path: str, request: Request):
        raise ApiError(404, f"There is no {request.method} /v1/{path} here: this API serves GET /v1/models, "
                       "GET /v1/models/{model}, POST /v1/chat/completions and POST /v1/completions.", code="unknown_url")

    return app


def lookup(host: ModelHost, name: str | None):
    try:
        return host.get(name)
    except KeyError:
        raise ApiError(404, f"The model {name!r} is not loaded here; GET /v1/models lists {host.names()}.",
                       param="model", code="model_not_found") from None


async def stream(meta: Meta, steps: Steps, include_usage: bool):
    """Data-only server-sent events: a role chunk per choice, one chunk per token per choice (the last
    with its finish_reason), the usage chunk if asked, then [DONE]. A failure once streaming has begun
    ends it with one event in the error shape (what `job_error` answers), then [DONE]. When the client
    goes away Starlette cancels this generator, and `finally` stops the generation."""
    try:
        for i in range(meta.gen.params.n):
            yield sse(meta.chunk([meta.first_delta(i)], include_usage=include_usage))
        try:
            async for batch in steps:
                for step in batch:
                    yield sse(meta.chunk([meta.step_delta(step)], include_usage=include_usage))
        except Exception as e:  # the status line is sent already: report in the stream, as vLLM does
            yield sse(job_error(e).body)
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield sse(meta.chunk([], usage=meta.usage(), include_usage=True))
        yield "data: [DONE]\n\n"
    finally:
        meta.gen.stop()
