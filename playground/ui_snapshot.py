"""The selected step's exact distribution for the teaching views that need more than its compact record
(many draws, engine orders side by side): the step's snapshot, which settings it is shown under, and
what the view must say when the model is not there.

A snapshot comes from the shared cache (a UI run keeps completion 1's as it is drawn), or else from one
replay of the completion's earlier tokens in the model's shared batch (playground/ui_runs.snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from engine.knobs import ParamError, SamplingParams
from engine.model import LoadedModel
from engine.scheduler import Refused
from engine.whatif import Snapshot
from playground import ui_runs
from playground.models import ModelHost

# Knobs that do not shape one step's distribution: a change in them is not worth a word.
NOT_THE_STEP = ("n", "seed", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens", "stop")


@dataclass(frozen=True)
class At:
    """A selected step, with what its pipeline needs besides the snapshot."""

    run: dict
    completion: int
    position: int

    @property
    def earlier(self) -> list[int]:
        return [s["token_id"] for s in self.run["completions"][self.completion]["steps"][: self.position]]

    @property
    def coords(self) -> tuple[int, int, int]:
        """The run's random number for this step: (seed, completion index, position)."""
        return (self.run["params"]["seed"], self.run.get("first_index", 0) + self.completion, self.position)

    @property
    def memory(self) -> dict[str, float]:
        return ui_runs._memory_at(self.run["completions"][self.completion]["steps"][self.position])

    @property
    def constrained(self) -> bool:
        return "constraint" in self.run["stages"]

    @property
    def step(self) -> dict[str, Any]:
        return self.run["completions"][self.completion]["steps"][self.position]


def model_of(host: ModelHost, run: dict) -> tuple[LoadedModel | None, str]:
    """The run's model when it is loaded and the run has its prompt (both needed to recompute a step);
    else None and the reason, in words."""
    if not run.get("prompt_ids"):
        return None, "this run holds no prompt (an API response saved without its request)"
    try:
        return host.get(run["model"]), ""
    except KeyError:
        return None, f"its model, {run['model']!r}, is not loaded here"


def fetch(host: ModelHost, stops, lm: LoadedModel, at: At, session: str) -> Iterator[str | Snapshot]:
    """Yields a note while it replays (when the step is not cached), then the Snapshot; or a last note
    (str) saying why there is none (stopped, queue full)."""
    snap = ui_runs.cached_snapshot(lm, at.run, at.completion, at.position)
    if snap is None:
        pos = at.position
        yield (f"Getting step {pos}'s exact logits: replaying the {pos} earlier token{'s' * (pos != 1)} of this "
               "completion once (cached afterwards)…")
        with stops.run(session) as flag:
            try:
                snap = ui_runs.snapshot(lm, host.scheduler(lm.name), at.run, at.completion, pos, cancel=flag.is_set,
                                        session=session)
            except (Refused, ParamError) as e:
                yield f"Cannot recompute this step: {getattr(e, 'message', e)}"
                return
        if snap is None:
            yield "Stopped."
            return
    yield snap


def settings_words(run: dict, params: SamplingParams) -> str:
    """'the run's own settings', or 'the current settings (temperature 1.0 → 1.7)'."""
    theirs, mine = run["params"], params.to_dict()
    changes = [f"{k} {theirs.get(k)} → {v}" for k, v in mine.items() if k not in NOT_THE_STEP and theirs.get(k) != v]
    return "the run's own settings" if not changes else f"the current settings ({', '.join(changes)})"
