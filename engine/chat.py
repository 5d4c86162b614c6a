"""A chat request turned into a Generation, and a completion's text turned back into a message.

One place for what the UI and the HTTP API both do around the generator: render the conversation
(with tools) through the chat template, pick the grammar (tool_choice, response_format) and the
thinking budget (reasoning_effort), and afterwards split reasoning, content and tool calls.

    chat = ChatRequest.build(lm, messages, params, tools=..., tool_choice=..., ...)   # ParamError on bad input
    gen = chat.generation(cancel=...)
    for steps in gen: ...
    message = chat.message(gen.texts[i], gen.finish_reasons[i])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine import reasoning
from engine import tools as toolkit
from engine.constraints import Grammar
from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine.model import LoadedModel
from engine.remote import RemoteError

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class ChatRequest:
    lm: LoadedModel
    prompt_ids: list[int]
    params: SamplingParams
    functions: list[dict]
    tool_choice: str
    grammar: Grammar | None
    thinking: reasoning.Thinking | None

    @classmethod
    def build(
        cls,
        lm: LoadedModel,
        messages: list[dict],
        params: SamplingParams,
        tools: Any = None,
        tool_choice: Any = None,
        response_format: Any = None,
        reasoning_effort: str | None = None,
        modalities: Any = None,
    ) -> "ChatRequest":
        check_modalities(modalities)
        messages = check_messages(messages)
        functions = toolkit.check_tools(tools)
        choice = toolkit.check_tool_choice(tool_choice, functions)
        offered = functions if choice != "none" else []
        grammar = toolkit.call_grammar(functions, choice)
        answer_grammar = toolkit.response_grammar(response_format)
        if grammar is not None and answer_grammar is not None:
            raise ParamError("response_format", "response_format cannot be combined with tool_choice required or a named function")
        msgs, kwargs = toolkit.prompt_messages(messages, offered, lm.tokenizer)
        if reasoning_effort is not None and not reasoning.supports_thinking(lm):
            reasoning.Thinking.for_request(lm, reasoning_effort, [])  # raises the explanatory ParamError
        kwargs.update(reasoning.template_kwargs(reasoning_effort))
        try:
            prompt_ids = lm.encode_chat(msgs, **kwargs)
        except RemoteError:  # a remote model's server failed to apply its template: not the messages' fault
            raise
        except Exception as e:  # a template may refuse a conversation (e.g. roles out of order)
            raise ParamError("messages", f"the model's chat template refused these messages: {e}") from None
        thinking = None if reasoning_effort is None else reasoning.Thinking.for_request(lm, reasoning_effort, prompt_ids)
        return cls(lm, prompt_ids, params, functions, choice, grammar or answer_grammar, thinking)

    def generation(self, cancel: Callable[[], bool] | None = None, prefix_ids: list[int] = (), first_index: int = 0,
                   memory: dict | None = None, replay_prefix: bool = False, capture: bool = False) -> Generation:
        return Generation(self.lm, self.prompt_ids, self.params, cancel=cancel, prefix_ids=list(prefix_ids),
                          grammar=self.grammar, thinking=self.thinking, first_index=first_index, memory=memory,
                          replay_prefix=replay_prefix, capture=capture)

    def message(self, text: str, finish_reason: str | None) -> dict:
        """The assistant message for a completion: content, reasoning_content, tool_calls, finish_reason."""
        return assistant_message(text, finish_reason, self.functions, self.tool_choice, self.thinking is not None)


def assistant_message(text: str, finish_reason: str | None, functions: list[dict], tool_choice: str, thinking: bool) -> dict:
    """Split a completion's text into reasoning, content and tool calls (finish_reason tool_calls)."""
    reasoning_text, content = reasoning.split(text) if thinking else (None, text)
    calls = []
    if tool_choice != "none":
        content, calls = toolkit.parse_tool_calls(content, functions)
    return {
        "role": "assistant",
        "content": content,
        "reasoning_content": reasoning_text,
        "tool_calls": calls,
        "finish_reason": "tool_calls" if calls and finish_reason == "stop" else finish_reason,
    }


def check_modalities(modalities: Any) -> None:
    if modalities is None:
        return
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ParamError("modalities", 'modalities must be a list such as ["text"]')
    if "audio" in modalities:
        raise ParamError("modalities", "audio output is not supported: this playground's models produce text only; use [\"text\"]",
                         code="unsupported_parameter")
    if modalities != ["text"]:
        raise ParamError("modalities", f'modalities must be ["text"]; got {modalities!r}')


def check_messages(messages: Any) -> list[dict]:
    """Plain {role, content} dicts; text parts of a content list are joined; anything else is refused."""
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "messages must be a non-empty list of {role, content}")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ParamError(f"messages[{k}].role", f"messages[{k}].role must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ParamError(f"messages[{k}].content", f"messages[{k}].content: only text parts are supported, got {kind!r}")
                texts.append(part["text"])
            content = "".join(texts)
        if content is not None and not isinstance(content, str):
            raise ParamError(f"messages[{k}].content", f"messages[{k}].content must be a string or a list of text parts")
        if content is None and not (m["role"] == "assistant" and m.get("tool_calls")):
            raise ParamError(f"messages[{k}].content", f"messages[{k}].content is missing")
        role = "system" if m["role"] == "developer" else m["role"]  # OpenAI's newer name for system
        clean = {"role": role, "content": content}
        if m.get("tool_calls"):
            clean["tool_calls"] = m["tool_calls"]
        if m.get("tool_call_id"):
            clean["tool_call_id"] = m["tool_call_id"]
        out.append(clean)
    return out
