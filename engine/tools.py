"""Tools and structured output: checking the request, prompting the model, the grammars, parsing calls.

Calls are written `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the Hermes / Qwen form).
A chat template that knows tools renders them itself; for one that does not (SmolLM2's), the tools are
described in the system message by TOOL_PROMPT below, and earlier calls and results are written into
the conversation as text. tool_choice "required" or a named function is guaranteed by a grammar that
only admits a call to an allowed function whose arguments match its JSON schema.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from engine.constraints import Grammar
from engine.knobs import ParamError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPEN, CLOSE = "<tool_call>", "</tool_call>"
EMPTY_OBJECT = {"type": "object", "properties": {}}

TOOL_PROMPT = """You can call functions. These are available, as JSON schemas:
{tools}
To call one, answer with only:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}
</tool_call>"""


def check_tools(tools: Any) -> list[dict]:
    """The function definitions of a request's `tools`, normalised; ParamError for anything else."""
    if tools is None:
        return []
    if not isinstance(tools, list) or not tools:
        raise ParamError("tools", "tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    out, names = [], set()
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ParamError(f"tools[{k}]", f"tools[{k}] must be {{\"type\": \"function\", \"function\": {{...}}}}; only functions are supported")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ParamError(f"tools[{k}].function.name", f"tools[{k}].function.name must be 1-64 letters, digits, _ or -; got {name!r}")
        if name in names:
            raise ParamError(f"tools[{k}].function.name", f"two tools are named {name!r}")
        params = fn.get("parameters", EMPTY_OBJECT)
        if not isinstance(params, dict):
            raise ParamError(f"tools[{k}].function.parameters", f"tools[{k}].function.parameters must be a JSON schema object")
        names.add(name)
        out.append({"name": name, "description": str(fn.get("description") or ""), "parameters": params})
    return out


def check_tool_choice(choice: Any, functions: list[dict]) -> str:
    """'none', 'auto', 'required' or the name of the one function to call."""
    if choice is None:
        return "auto" if functions else "none"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not functions:
            raise ParamError("tool_choice", f"tool_choice {choice!r} needs tools")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in {f["name"] for f in functions}:
            raise ParamError("tool_choice", f"tool_choice names function {name!r}, which is not among tools")
        return name
    raise ParamError("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def template_knows_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def prompt_messages(messages: list[dict], functions: list[dict], tokenizer) -> tuple[list[dict], dict]:
    """(messages, extra apply_chat_template kwargs) with tools, calls and results rendered for the model."""
    native = template_knows_tools(tokenizer)
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and m.get("tool_calls") and not native:
            calls = "\n".join(f"{OPEN}\n{json.dumps(_call_body(c), ensure_ascii=False)}\n{CLOSE}" for c in m.pop("tool_calls"))
            m["content"] = ((m.get("content") or "") + "\n" + calls).strip()
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    if not functions:
        return out, {}
    if native:
        return out, {"tools": [{"type": "function", "function": f} for f in functions]}
    described = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    text = TOOL_PROMPT.format(tools=described)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + text}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out, {}


def _call_body(call: dict) -> dict:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        pass
    return {"name": fn.get("name"), "arguments": args}


def call_grammar(functions: list[dict], choice: str) -> Grammar | None:
    """For 'required' or a named function: only a call to an allowed function with valid arguments."""
    if choice in ("none", "auto"):
        return None
    allowed = [f for f in functions if choice == "required" or f["name"] == choice]
    shapes = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": closed(f["parameters"])},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in allowed
    ]
    # Compact JSON: a small model given free whitespace wanders off into newlines and indentation.
    schema = json.dumps({"x-guidance": {"whitespace_flexible": False}, **({"anyOf": shapes} if len(shapes) > 1 else shapes[0])})
    lark = f'start: "{OPEN}\\n" call "\\n{CLOSE}"\ncall: %json {schema}'
    return Grammar.lark(lark, label="tool call", param="tools")


def closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others (additionalProperties
    false unless it says otherwise), as OpenAI's strict mode requires: otherwise a small model
    invents argument after argument."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def response_grammar(response_format: Any) -> Grammar | None:
    """response_format {"type": "text" | "json_object" | "json_schema", ...} as a grammar (None: text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_schema({"type": "object"}, label="json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ParamError("response_format", "response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
        return Grammar.json_schema(closed(schema) if spec.get("strict") else schema, label="json_schema")
    raise ParamError("response_format", "response_format type must be one of text, json_object, json_schema")


def parse_tool_calls(text: str, functions: list[dict]) -> tuple[str | None, list[dict]]:
    """(content left over, OpenAI tool_calls) found in a completion; calls to unknown names stay text."""
    names = {f["name"] for f in functions}
    calls, kept, pos = [], [], 0
    for m in re.finditer(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", text, re.S):
        try:
            body = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(body, dict) or body.get("name") not in names:
            continue
        args = body.get("arguments", body.get("parameters", {}))
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": body["name"], "arguments": json.dumps(args, ensure_ascii=False)},
            }
        )
        kept.append(text[pos : m.start()])
        pos = m.end()
    if not calls:
        return text, []
    rest = ("".join(kept) + text[pos:]).strip()
    return (rest or None), calls
