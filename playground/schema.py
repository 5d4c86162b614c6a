"""The wire schema of the chat-completions API (pydantic), and the one function that turns a request into
engine inputs (`to_engine`).

Sampling knobs are typed `Any` on the wire and documented in the OpenAPI schema from `engine.knobs.KNOBS`
(type, range, default, help), so ranges are written once. Their values are checked by
`SamplingParams.build`, so a bad value gets the engine's message naming the knob and its range. The
non-OpenAI knobs (top_k, min_p, repetition_penalty, ...) sit at the top level, where the openai client's
`extra_body` puts them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from engine.knobs import KNOBS, MAX_STOP_SEQUENCES, REQUEST_KNOBS, Knob, ParamError, SamplingParams
from engine.chat import ChatRequest
from engine.model import LoadedModel


def _knob_json_schema(knob: Knob) -> dict:
    """The OpenAPI schema of one knob's value, read from its definition."""
    if knob.kind in ("float", "int", "optional_int"):
        value: dict = {"type": "number" if knob.kind == "float" else "integer"}
        if knob.lo is not None:
            value["exclusiveMinimum" if knob.lo_open else "minimum"] = knob.lo
        if knob.hi is not None:
            value["exclusiveMaximum" if knob.hi_open else "maximum"] = knob.hi
    elif knob.kind == "bool":
        value = {"type": "boolean"}
    elif knob.kind == "choice":
        kind = "integer" if all(isinstance(c, int) for c in knob.choices) else "string"
        value = {"type": kind, "enum": list(knob.choices)}
    elif knob.kind in ("stop", "strings"):
        most = {"maxItems": MAX_STOP_SEQUENCES} if knob.kind == "stop" else {}
        value = {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, **most},
        ]}
    elif knob.kind == "logit_bias":
        value = {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": knob.lo, "maximum": knob.hi},
        }
    elif knob.kind == "order":
        value = {"type": "array", "items": {"type": "string", "enum": list(knob.choices)},
                 "minItems": len(knob.choices), "maxItems": len(knob.choices), "uniqueItems": True}
    else:
        raise AssertionError(knob.kind)
    extension = "" if knob.openai else " (playground extension; with the openai client pass it in extra_body)"
    range_text = f" Range {knob.range_text()}." if knob.range_text() else ""
    return {"anyOf": [value, {"type": "null"}], "description": knob.help + range_text + extension}


def _knob_field(knob: Knob):
    default = list(knob.default) if isinstance(knob.default, tuple) else knob.default
    # The field itself defaults to None ("not given"); the schema shows what that means.
    return Annotated[Any, WithJsonSchema(_knob_json_schema(knob))], Field(None, json_schema_extra={"default": default})


# One optional field per sampling knob; null or absent means the knob's default.
SamplingFields = create_model("SamplingFields", **{name: _knob_field(knob) for name, knob in KNOBS.items()})


class _Wire(BaseModel):
    # Strict: a string is not silently read as a number or a boolean; unknown fields are refused by name.
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class MediaPart(BaseModel):
    """An image, audio or file part: valid OpenAI input, refused by the engine by name (text models)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url", "input_audio", "file"]


class _Message(BaseModel):
    # Extra fields are ignored, not refused: clients echo whole response messages back (refusal, audio, ...).
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str | None = None


class SystemMessage(_Message):
    role: Literal["system", "developer"]  # developer is OpenAI's newer name; the template reads it as system
    content: str | list[TextPart]


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[Annotated[TextPart | MediaPart, Field(discriminator="type")]]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None  # may be null when the message holds tool_calls
    tool_calls: list[dict] | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDef(_Wire):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Wire):
    name: str
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")  # `schema` would shadow a BaseModel method
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Wire):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # accepted for compatibility; chunks are never padded


def _doc(name: str) -> str:
    return REQUEST_KNOBS[name].help


class ChatCompletionRequest(SamplingFields, _Wire):
    """POST /v1/chat/completions. Every sampling knob of the playground is a top-level field."""

    model: str | None = Field(None, description=_doc("model") + " Absent: the server's default model.")
    messages: list[Message] = Field(min_length=1, description=_doc("messages"))
    stream: bool | None = Field(None, description=_doc("stream"))
    stream_options: StreamOptions | None = Field(None, description=_doc("stream_options"))
    tools: list[Tool] | None = Field(None, description=_doc("tools"))
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(None, description=_doc("tool_choice"))
    reasoning_effort: Literal[REQUEST_KNOBS["reasoning_effort"].choices] | None = Field(None, description=_doc("reasoning_effort"))
    modalities: list[Literal["text", "audio"]] | None = Field(None, description=_doc("modalities"))
    response_format: ResponseFormat | None = Field(None, description=_doc("response_format"))
    audio: dict | None = Field(None, description="Audio output is not supported: text models only.")
    trace: bool | None = Field(
        None,
        description="Playground extension: return, per choice, the sampler's record of every step (the "
        "probabilities after each stage, kept counts, removed mass, where the draw landed) and the text of "
        "every token id in it, so the UI's pictures can be rebuilt from a saved response.",
    )
    # Accepted for compatibility with OpenAI clients; they change nothing here.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


def to_engine(req: ChatCompletionRequest, lm: LoadedModel) -> ChatRequest:
    """The one conversion from the wire to the engine: validated sampling params, and the conversation,
    tools, response_format and reasoning_effort as the engine's ChatRequest. Raises ParamError naming
    the offending field."""
    if req.stream_options is not None and not req.stream:
        raise ParamError("stream_options", "stream_options is only allowed when stream is true")
    if req.audio is not None:
        raise ParamError("audio", "audio output is not supported: this playground's models produce text only",
                         code="unsupported_parameter")
    params = SamplingParams.build(**{name: getattr(req, name) for name in KNOBS})
    return ChatRequest.build(
        lm,
        [m.model_dump(exclude_none=True) for m in req.messages],
        params,
        tools=_plain(req.tools),
        tool_choice=_plain(req.tool_choice),
        response_format=_plain(req.response_format),
        reasoning_effort=req.reasoning_effort,
        modalities=req.modalities,
    )


def _plain(value: Any) -> Any:
    """Wire models back to the JSON-shaped values the engine checks (strings and None pass through)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.model_dump(exclude_none=True, by_alias=True) if isinstance(value, BaseModel) else value
