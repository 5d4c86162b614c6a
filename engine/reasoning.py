"""reasoning_effort: a thinking budget for models whose chat template has a <think> section.

Each level allows so many tokens of thinking; when a completion reaches its budget still thinking,
the generator closes the section itself by forcing the closing tag's tokens (through the sampler's
constraint stage, so the inspector shows the forcing). The thinking text is returned apart from the
answer (`reasoning_content`).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.knobs import ParamError
from engine.model import LoadedModel

BUDGETS = {"low": 256, "medium": 1024, "high": 4096}
OPEN, CLOSE = "<think>", "</think>"


def supports_thinking(lm: LoadedModel) -> bool:
    template = getattr(lm.tokenizer, "chat_template", None) or ""
    return OPEN in template and CLOSE in template


def template_kwargs(reasoning_effort: str | None) -> dict:
    # Templates with a switch (Qwen3, SmolLM3) read `enable_thinking`; others ignore unknown kwargs.
    return {} if reasoning_effort is None else {"enable_thinking": True}


@dataclass(frozen=True)
class Thinking:
    budget: int
    open_ids: tuple[int, ...]  # tokens that open the section: "<think>\n"
    close_ids: tuple[int, ...]  # tokens that close the section: "\n</think>\n\n"
    starts_inside: bool  # the generation prompt already opened <think>

    @classmethod
    def for_request(cls, lm: LoadedModel, effort: str, prompt_ids: list[int]) -> "Thinking":
        if not supports_thinking(lm):
            raise ParamError(
                "reasoning_effort",
                f"reasoning_effort needs a model whose chat template supports thinking; {lm.name} has none "
                f"(leave reasoning_effort unset)",
                code="unsupported_parameter",
            )
        if effort not in BUDGETS:
            raise ParamError("reasoning_effort", f"reasoning_effort must be one of low, medium, high; got {effort!r}")
        tail = lm.tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False)
        inside = tail.rfind(OPEN) > tail.rfind(CLOSE)
        opening = lm.tokenizer.encode(OPEN + "\n", add_special_tokens=False)
        close = lm.tokenizer.encode("\n" + CLOSE + "\n\n", add_special_tokens=False)
        return cls(BUDGETS[effort], tuple(opening), tuple(close), inside)

    def start(self) -> "ThinkState":
        return ThinkState(self)


class ThinkState:
    """Where one completion stands: before, inside or after its thinking section."""

    def __init__(self, thinking: Thinking):
        self.t = thinking
        self.inside = thinking.starts_inside
        self.done = False  # the section was closed (or never opened): the answer has begun
        self.used = 0
        self.text = ""
        # Asked to think, the completion does: the section is opened for it when the prompt did not.
        self.forced: list[int] = [] if thinking.starts_inside else list(thinking.open_ids)

    def next_forced(self) -> int | None:
        """The token this completion must take next, while the generator closes the section."""
        if self.inside and not self.forced and self.used >= self.t.budget:
            self.forced = list(self.t.close_ids)
        return self.forced[0] if self.forced else None

    def feed(self, token_id: int, text: str) -> None:
        """Follow the completion's next token, drawn or given (a replayed or branched prefix): the same
        state either way, so a prefix that ends inside the forced close continues that close."""
        if self.next_forced() == token_id:
            self.forced.pop(0)
        self.text += text
        if self.done:
            return
        if not self.inside:
            stripped = self.text.lstrip()
            if stripped.startswith(OPEN):
                self.inside = True
            elif stripped and not OPEN.startswith(stripped):
                self.done = True  # the model answered without thinking
            return
        self.used += 1
        if CLOSE in self.text and not self.forced:
            self.inside, self.done = False, True


def split(text: str) -> tuple[str | None, str]:
    """(reasoning_content, content) of a completion's text; no thinking section gives (None, text)."""
    if CLOSE not in text:
        head = text.lstrip()
        if head.startswith(OPEN):
            return head[len(OPEN) :].strip(), ""
        return None, text
    before, after = text.split(CLOSE, 1)
    before = before.lstrip()
    if before.startswith(OPEN):
        before = before[len(OPEN) :]
    return before.strip(), after.lstrip("\n")
