"""Sampling Playground: the Gradio UI and the OpenAI-compatible HTTP API on one server.

    python app.py [--model ID_OR_FOLDER] [--remote URL --remote-model NAME [--remote-tokenizer ID_OR_FOLDER]] [--host 127.0.0.1] [--port 7860] [--api-key KEY] [--allow-connect] [--threads N]
                  [--max-logprobs 20] [--logprobs-mode raw_logprobs] [--kv-store-mb 256]
"""

from __future__ import annotations

import argparse
import gc
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# After every event Gradio's queue rebuilds a pandas summary of the last 10,000 events (a DataFrame and a
# groupby, in a worker thread holding the GIL: 3 ms at 100 events, 7 ms at 10,000, measured here) that only
# its monitoring dashboard reads, which this app does not turn on. A page makes about ten events a run.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**9))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _logprobs_cap(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, or -1 for no cap, got {text!r}")
    return value


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (megabytes; 0 turns it off), got {text!r}")
    return value


# playground/api_completions.LOGPROBS_MODES, written out: importing it would load torch before the threads are set.
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("PLAYGROUND_MODEL"),
                   help="Hugging Face model id or local folder (env PLAYGROUND_MODEL; default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--api-key", default=os.environ.get("PLAYGROUND_API_KEY"), help="require Authorization: Bearer KEY on /v1 (env PLAYGROUND_API_KEY)")
    p.add_argument("--open-api", action="store_true", help="serve /v1 without a key to clients beyond loopback (on by default on a Hugging Face Space)")
    # String defaults go through `type` too, so a bad environment value gets argparse's clear error.
    p.add_argument("--max-batch-rows", type=_positive_int, default=os.environ.get("PLAYGROUND_MAX_BATCH_ROWS", "128"),
                   help="completions decoding at once in the shared batch (a request of n takes n); more wait in the queue")
    p.add_argument("--max-batch-tokens", type=_positive_int, default=os.environ.get("PLAYGROUND_MAX_BATCH_TOKENS", "65536"),
                   help="token slots the shared batch's KV cache may hold when a request joins (rows x width); more wait")
    p.add_argument("--max-queue", type=_positive_int, default=os.environ.get("PLAYGROUND_MAX_QUEUE", "256"),
                   help="requests waiting for room; past it, 429 with Retry-After")
    p.add_argument("--threads", type=_positive_int, default=os.environ.get("PLAYGROUND_THREADS"),
                   help="intra-op threads for tensor work, fixed for the process and part of the system_fingerprint "
                        "(env PLAYGROUND_THREADS; default: one less than the cores, see engine/threads.py)")
    p.add_argument("--max-logprobs", type=_logprobs_cap, default=20,
                   help="most top values /v1/completions returns per token; -1: no cap, and logprobs: -1 gets the whole vocabulary")
    p.add_argument("--logprobs-mode", choices=LOGPROBS_MODES, default="raw_logprobs",
                   help="what /v1/completions' logprobs are (as vLLM's flag): the model's raw values, or the final "
                        "distribution's after every sampler stage; logprobs or logits")
    p.add_argument("--kv-store-mb", type=_megabytes, default=256,
                   help="KV caches of sequences just served, kept so a request that continues one costs only its new tokens; 0: off")
    p.add_argument("--remote", default=None, metavar="URL",
                   help="also show a model served by an inference server (vLLM, this playground, an OpenAI-compatible "
                        "provider) with /v1/completions on token prompts and logprobs; its key comes from the env "
                        "PLAYGROUND_REMOTE_KEY, never from the command line")
    p.add_argument("--remote-model", default=None, metavar="NAME", help="the model's name on that server (see its /v1/models)")
    p.add_argument("--remote-tokenizer", default=None, metavar="ID_OR_FOLDER",
                   help="a local tokenizer for the remote model's vocabulary (default: --remote-model as a Hub id or "
                        "folder, else the server's /detokenize read once and cached; grammars need a local tokenizer)")
    p.add_argument("--allow-connect", action="store_true",
                   help="let visitors connect a server from the page on a public server (a Space, --open-api, a host "
                        "beyond loopback), where it is off: each visitor could make this server fetch any address")
    p.add_argument("--zerogpu", action="store_true",
                   help="ZeroGPU mode without ZeroGPU: each action's call runs on a thread of its own and everything it "
                        "takes and yields passes through pickle (tests and benchmarks; on a ZeroGPU Space the mode is automatic)")
    p.add_argument("--zerogpu-api", action="store_true", default=os.environ.get("PLAYGROUND_ZEROGPU_API") == "1",
                   help="serve /v1 on ZeroGPU too, where its calls draw on the Space's own GPU quota (env PLAYGROUND_ZEROGPU_API=1)")
    return p.parse_args(argv)


def configure_threads(args: argparse.Namespace) -> str:
    """Fix the process's intra-op thread count, before any tensor work; returns the line to print."""
    from engine.threads import current_threads, default_threads, set_threads, usable_cores, wait_policy

    cores = usable_cores()
    if args.threads is None:
        n, why = default_threads(cores)
    else:
        n, why = args.threads, f"set by --threads or PLAYGROUND_THREADS, of {cores} cores"
    # libgomp reads its wait policy once, when torch loads it: this must come before torch's import.
    if (policy := wait_policy(n, cores)) and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = policy
    set_threads(n)
    return f"threads: {current_threads()} ({why}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"


def limits(args: argparse.Namespace):
    from engine.scheduler import Limits

    return Limits(max_rows=args.max_batch_rows, max_tokens=args.max_batch_tokens, max_queue=args.max_queue)


def build_app(host, args: argparse.Namespace):
    """The FastAPI app with /v1 routes, and the Gradio UI mounted at / (routes first, as Gradio needs)."""
    import gradio as gr

    from playground.api import ZEROGPU_OFF, ApiSettings, create_api
    from playground import gradio_assets, ui_remote, ui_stream
    from playground.ui import build_ui, launch_kwargs

    if getattr(args, "remote", None):
        host.add(connect_remote(args))
    host.connect_off = ui_remote.why_off(args.host, args.open_api, bool(os.environ.get("SPACE_ID")), args.allow_connect)
    settings = ApiSettings(api_key=args.api_key, open_to_remote=args.open_api or bool(os.environ.get("SPACE_ID")),
                           max_logprobs=args.max_logprobs, logprobs_mode=args.logprobs_mode,
                           kv_store_bytes=args.kv_store_mb * 2**20,
                           off=ZEROGPU_OFF if host.gpu is not None and not args.zerogpu_api else None)
    app = create_api(host, settings)
    app.include_router(ui_stream.router())  # live runs to their pages (playground/ui_stream.py)
    app.include_router(gradio_assets.router())  # Gradio's frontend, fixed (playground/gradio_assets.py)
    demo = build_ui(host)
    return gr.mount_gradio_app(app, demo, path="/", **launch_kwargs())


def on_zerogpu() -> bool:
    """Whether this is a ZeroGPU Space, as the `spaces` package reads it (SPACES_ZERO_GPU). There, importing
    the package patches torch, which must happen before anything touches CUDA."""
    try:
        from spaces.config import Config
    except ImportError:  # not installed: no ZeroGPU
        return False
    return Config.zero_gpu


def gpu_calls(args: argparse.Namespace):
    """The decorator every model action's call goes through (playground/zerogpu.py), None for the shared
    loop. On ZeroGPU this imports `spaces`, which patches torch: before anything touches CUDA."""
    if on_zerogpu():
        import importlib

        importlib.import_module("spaces")  # it patches torch so that the model can go to cuda at start
        from playground.zerogpu import spaces_gpu
        return spaces_gpu
    if args.zerogpu:
        from playground.zerogpu import pickled
        return pickled
    return None


def zerogpu_startup(host) -> None:
    """What ZeroGPU runs from its patched gr.Blocks.launch, which this app (FastAPI + uvicorn) never calls:
    pack the model's CUDA tensors for the workers and report the decorated functions, which must exist by
    then (the first model's scheduler makes them)."""
    import spaces.zero

    host.scheduler()
    spaces.zero.startup()


def connect_remote(args: argparse.Namespace):
    """The model of --remote, or exit with the reason it cannot be used (engine/remote.py)."""
    from engine.remote import RemoteError, connect

    if not args.remote_model:
        raise SystemExit("--remote needs --remote-model NAME (the model's name on that server, see its /v1/models)")
    try:
        lm = connect(args.remote, args.remote_model, tokenizer=args.remote_tokenizer)
    except RemoteError as e:
        raise SystemExit(f"--remote {args.remote}: {e}") from None
    print(f"remote model ready in {lm.load_seconds:.1f} s: {lm.name}", flush=True)
    return lm


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(configure_threads(args), flush=True)  # before the model loads: no tensor work may come first
    gpu = gpu_calls(args)

    import uvicorn

    from engine.model import load_model
    from playground.loading import LoadingPage
    from playground.models import ModelHost

    # Until the model is loaded (seconds from the cache, ~20 s on a first start, longer from the Hub)
    # the port serves a page that shows the progress.
    with LoadingPage(args.host, args.port) as page:
        def progress(message: str) -> None:
            print(message, flush=True)
            page.say(message)

        lm = load_model(args.model, args.device, args.dtype, progress=progress, own_thread=not on_zerogpu())
    print(f"model ready in {lm.load_seconds:.1f} s: {lm.name} on {lm.device} ({lm.source})", flush=True)
    host = ModelHost(lm, args.device, args.dtype, limits(args), gpu=gpu)
    if on_zerogpu():
        zerogpu_startup(host)
    if gpu is not None:
        print(f"ZeroGPU mode{'' if on_zerogpu() else ' (forced, no GPU)'}: each model action is one GPU call; "
              f"/v1 {'on' if args.zerogpu_api else 'off (503)'}", flush=True)
    app = build_app(host, args)
    print(f"Sampling Playground on http://{args.host}:{args.port}  (API: http://{args.host}:{args.port}/v1)", flush=True)
    # What start-up built (torch, transformers, Gradio, the model's modules, the UI: about 530,000 objects)
    # lives as long as the server: kept out of the collector's sight, a full collection walks only what
    # requests made. Measured with eight pages generating: a full collection took 0.33 s without this, every
    # thread waiting and every stream stalled; 36 ms with it.
    gc.collect()
    gc.freeze()
    # A short graceful shutdown: an open client connection otherwise holds SIGTERM for minutes.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=3, log_level="warning")


if __name__ == "__main__":
    main()
