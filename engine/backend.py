"""The seam between the decode loop and whatever computes the next-token logits: the Rows protocol.

    backend = lm.new_rows()                       # chosen once, by the model (local, or a remote server)
    joining = backend.prefill(job, chunk)         # .advance() until True; then .cache and .logits (1, V)
    backend.join(job, joining.cache, n)           # the job's n rows come last in the batch
    logits = backend.forward(tokens, wants)       # (B,) drawn tokens in, (B, V) float32 next logits out
    backend.keep([0, 2])                          # only these rows stay (rows that finished leave)

`engine/batch.py`'s Batch holds one and does everything per row itself (histories, the pipeline, the
draw, the record), so the sampler, the recorder, the scheduler and the UI never ask which kind of model
they hold. Like vLLM's executors behind `execute_model`, or mlx-lm's `generate_step` over any
`model(tokens, cache) -> logits`, the protocol sits at the level of rows joining, stepping and leaving,
because that is where a local KV cache (padding, trimming, chunked prefill) and a remote server's
token lists differ.

Two capabilities only some backends have are methods every backend answers, so nobody branches:
`approximate` (which stages of a step depended on values the backend does not know: a server's top K)
and `redraw` (a draw that landed in the unknown rest of the vocabulary is drawn again within the known
tokens). A local model answers "none" to both.

What a row's next step needs beyond the top of its distribution (a grammar's allowed set, a thinking
budget's forced token, logit_bias ids) comes with `forward` as `wants(b)`, a lazy per-row callback: a
backend that knows only some tokens' values (a server's top K that can be asked for given ids) calls it
and fetches those; a local model never calls it. The batch computes a row's allowed set once a step, so
asking costs no second grammar computation. A prefill finds its job's first wants itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

if TYPE_CHECKING:
    from engine.generator import Generation


class Joining(Protocol):
    """A job's prompt going in: `advance()` until it returns True, then `cache` and `logits` (1, V)."""

    cache: Any
    logits: torch.Tensor | None
    done: int  # prompt tokens in so far

    def advance(self) -> bool: ...


class Rows(Protocol):
    known: torch.Tensor | None  # (B, V) bool: the logits that are the model's own values; None: all of them

    @property
    def width(self) -> int:
        """Token slots each row takes (a KV cache's width, padding included): what the scheduler budgets."""

    def prefill(self, job: "Generation", chunk: int) -> Joining: ...

    def mergeable(self, cache: Any) -> bool:
        """Whether rows of this prefilled job can share the batch with other jobs' rows."""

    def join(self, job: "Generation", cache: Any, n: int) -> None: ...

    def keep(self, keep: list[int]) -> None:
        """Only these rows stay, in this order (never none: `leave_all` empties)."""

    def leave_all(self) -> None: ...

    def forward(self, tokens: torch.Tensor, wants: Callable[[int], torch.Tensor | None] | None = None) -> torch.Tensor:
        """Each row's last drawn token (B,) appended; returns the rows' next logits (B, V) float32.
        wants(b): (k,) int64 ids whose values row b's next step needs (None: any), for a backend that may
        not know every logit; asking is optional, and costs the batch the row's allowed set only once."""

    def approximate(self, stages: list[tuple[str, torch.Tensor]], members: list[int]) -> list[tuple[str, ...]]:
        """Per member row (its batch index), the names of the stages whose output depended on logits this
        backend does not know. stages: [(name, (b, V) logits)] of those rows, as run_pipeline made them."""

    def redraw(self, final: torch.Tensor, chosen: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor,
               members: list[int]) -> list[bool]:
        """Where a row's `chosen` token is one whose value is unknown, draw again within the known tokens with
        the same uniform (writes `chosen`); per member row, whether it did."""
