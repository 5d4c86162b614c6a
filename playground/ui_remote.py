""""Connect a server" on the page: a visitor's own inference server (vLLM, llama.cpp's server, a provider,
another playground) shown through this playground's sampler (engine/remote.py does the talking).

The handlers are plain functions of plain values (tested without a browser); playground/ui.py wires them.
- `list_models`: the server's /v1/models into the dropdown.
- `connect_server`: probe the server, and the model joins the model list of this browser session only
  (playground/models.py: a connected model carries the visitor's key, so no other session and not /v1 may
  use it). The key box is emptied; the key lives on only inside that model's connection.
- `why_off`: on a public server (a Space, `--open-api`, a host beyond loopback) any visitor could make this
  server fetch any address, so connecting is off there unless the operator passes `--allow-connect`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import gradio as gr

from engine.remote import KEY_ENV, RemoteError, Server, connect
from playground.models import ModelHost
from playground.ui_events import model_info

Out = dict[str, Any]
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
TIMEOUT_S = 30.0  # what the page waits for an answer (listing, probing, then each step)


def why_off(host: str, open_api: bool, space: bool, allowed: bool) -> str | None:
    """Why connecting from the page is off (None: it is on). Remotes on the command line are always allowed."""
    if allowed:
        return None
    where = ("this is a Hugging Face Space" if space else "the API is open to other machines (--open-api)" if open_api
             else f"this server listens beyond loopback (--host {host})" if host not in LOOPBACK else None)
    if where is None:
        return None
    return (f"Connecting a server from the page is off: {where}, and any visitor could make it fetch any address. "
            "The operator turns it on with --allow-connect; a server given with --remote is always there.")


def url_error(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"⚠️ **URL**: an http:// or https:// address of the server, such as http://gpu-box:8000, got {url!r}"
    return None


def _said(e: Exception) -> str:
    # The remote module speaks to an operator (an environment variable); here a visitor types the key.
    return str(e).replace(f"set {KEY_ENV} to a key it accepts", "type a key it accepts")


def list_models(host: ModelHost, url: str, key: str, *, transport: Any = None) -> Out:
    """The server's models, for the dropdown; a clear note where it cannot list them."""
    if host.connect_off:
        return {"remote_note": f"⚠️ {host.connect_off}"}
    url = (url or "").strip()
    if (bad := url_error(url)) is not None:
        return {"remote_note": bad}
    server = Server(url, (key or "").strip() or None, TIMEOUT_S, transport)
    try:
        listed = server.get("/v1/models", method="GET").get("data") or []
    except RemoteError as e:
        return {"remote_note": f"⚠️ {_said(e)}"}
    finally:
        server.close()
    names = [str(m.get("id")) for m in listed if isinstance(m, dict) and m.get("id")]
    if not names:
        return {"remote_note": f"⚠️ the server at {url} lists no models on /v1/models",
                "remote_models": gr.update(choices=[], value=None)}
    return {"remote_models": gr.update(choices=names, value=names[0]),
            "remote_note": f"{len(names)} model{'s' * (len(names) != 1)} at {url}: pick one, then Connect."}


def connect_server(host: ModelHost, url: str, key: str, model: str | None, session: str, *, transport: Any = None,
                   tokenizer_object: Any = None) -> Out:
    """Connect this session to the server's model: it joins this session's model list and is picked."""
    if host.connect_off:
        return {"remote_note": f"⚠️ {host.connect_off}"}
    url, model = (url or "").strip(), (model or "").strip()
    if (bad := url_error(url)) is not None:
        return {"remote_note": bad}
    if not model:
        return {"remote_note": "⚠️ **model**: press List models and pick one of the server's models"}
    try:
        # "" and never None: None would send this server's own key (PLAYGROUND_REMOTE_KEY) to the visitor's URL.
        lm = connect(url, model, key=(key or "").strip(), timeout=TIMEOUT_S, transport=transport,
                     tokenizer_object=tokenizer_object)
    except RemoteError as e:
        return {"remote_note": f"⚠️ {_said(e)}"}
    except Exception as e:  # an answer of a shape nobody expected: say so, keep going
        return {"remote_note": f"⚠️ could not use {model!r} at {url}: {type(e).__name__}: {e}"}
    try:
        host.add(lm, owner=session)
    except ValueError as e:
        lm.server.close()
        return {"remote_note": f"⚠️ {e}"}
    exact = ("every stage is exact" if lm.signed and lm.logprobs < 0 else
             "stages that depended on values it did not send are marked approximate in the step view")
    if lm.logprobs >= 0:  # a top K: whether a grammar or a thinking budget can get the tokens it needs
        exact += ("; tokens outside its top K that a grammar, a thinking budget or a logit_bias needs are asked "
                  "for by id" if lm.token_ids else "; it cannot be asked for given tokens, so grammars (tools, "
                  "response_format) and thinking budgets are refused on it")
    return {"model": gr.update(choices=host.names(session), value=lm.name), "model_info": model_info(lm),
            "remote_key": "",
            "remote_note": f"Connected: **{lm.name}**, for this browser session only; {exact}."}


def model_choices(host: ModelHost) -> Out:
    """The model list as this session may pick from (an event that lists only the public models, such as
    Load model, is followed by this one)."""
    return {"model": gr.update(choices=host.names())}


def panel(host: ModelHost) -> dict[str, Any]:
    """The "Connect a server" accordion's components, by name (built in the Blocks being laid out)."""
    on = host.connect_off is None
    with gr.Accordion("Connect a server", open=False, elem_id="connect"):
        note = host.connect_off or ("Show a model served elsewhere (vLLM, llama.cpp's server, a provider, another "
                                    "playground) through this sampler. It and your key stay with this browser session.")
        out = {"remote_note": gr.Markdown(note, elem_id="remote-note")}
        with gr.Row(equal_height=True):
            out["remote_url"] = gr.Textbox(label="Server URL", placeholder="http://gpu-box:8000", interactive=on,
                                           scale=3, elem_id="remote-url")
            out["remote_key"] = gr.Textbox(label="Key (if it needs one)", type="password", interactive=on, scale=2,
                                           elem_id="remote-key")
            out["remote_list"] = gr.Button("List models", interactive=on, scale=1, elem_id="remote-list")
            out["remote_models"] = gr.Dropdown([], value=None, label="The server's model", interactive=on, scale=3,
                                               elem_id="remote-models")
            out["remote_connect"] = gr.Button("Connect", interactive=on, scale=1, elem_id="remote-connect")
    return out
