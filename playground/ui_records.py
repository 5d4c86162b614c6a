"""Pure helpers over recorded steps, shared by the figures, the token view and the UI.

A step here is the JSON-safe dict of `Step.to_dict(stages)` plus "shown" (the text to display for the
token, never empty). Token texts come in a separate map {token id: text} so a step stays small.
Probabilities in a step dict: `stages[s]["probs"][j]` is candidate `candidates[j]` after stage s.
"""

from __future__ import annotations

import math
from typing import Any

from engine.stages import ALL, token_label, visible

Step = dict[str, Any]

# Short names for chart rows and sentences, in pipeline vocabulary (engine/stages.py).
STAGE_LABELS = {"raw": "raw", **{name: stage.label for name, stage in ALL.items()}}


def prob(logprob: float | None) -> float:
    """A logprob from a step dict as a probability; None stands for a removed token (-inf)."""
    return 0.0 if logprob is None else math.exp(logprob)


def candidate_probs(step: Step, token_id: int) -> list[float] | None:
    """The token's probability after each stage, or None if it is not among the step's candidates."""
    try:
        j = step["candidates"].index(token_id)
    except ValueError:
        return None
    return [st["probs"][j] for st in step["stages"]]


def removed_by(step: Step, token_id: int) -> str | None:
    """The first stage that set the token's probability to zero; None if it survived (or is unknown)."""
    probs = candidate_probs(step, token_id)
    if probs is None:
        return None
    for s in range(1, len(probs)):
        if probs[s] == 0.0 and probs[s - 1] > 0.0:
            return step["stages"][s]["name"]
    return None


def alternatives(step: Step, texts: dict[int, str], limit: int = 20) -> list[dict[str, Any]]:
    """The raw distribution's top tokens at this step, most likely first, with their fate."""
    out = []
    for t in step["top"][:limit]:
        out.append(
            {
                "id": t["id"],
                "text": texts.get(t["id"], f"#{t['id']}"),
                "raw": prob(t["raw_logprob"]),
                "final": prob(t["logprob"]),
                "removed_by": removed_by(step, t["id"]),
                "chosen": t["id"] == step["token_id"],
            }
        )
    return out


def first_divergence(a: list[Step], b: list[Step]) -> int | None:
    """The first position where two completions chose different tokens (or one ended); None if equal."""
    for i, (sa, sb) in enumerate(zip(a, b)):
        if sa["token_id"] != sb["token_id"]:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def why_not(step: Step, token_id: int, texts: dict[int, str]) -> str:
    """Why this step did not pick `token_id`: which stage removed it, or that the draw went elsewhere."""
    name = token_label(texts, token_id)
    probs = candidate_probs(step, token_id)
    if probs is None:
        return f"'{name}' was not among its top candidates at all"
    stage = removed_by(step, token_id)
    if stage is not None:
        s = [st["name"] for st in step["stages"]].index(stage)
        return f"{STAGE_LABELS[stage]} removed '{name}' (it had p = {probs[s - 1]:.3f} just before)"
    if step.get("forced"):
        return f"'{name}' was still possible (p = {probs[-1]:.3f}), but you picked another token here to branch"
    if step["draw"] is None:
        return f"'{name}' was still possible (p = {probs[-1]:.3f}) but greedy decoding takes only the top token"
    return (
        f"'{name}' was still possible (p = {probs[-1]:.3f}); the random draw landed at "
        f"{step['draw']:.3f} on the cumulative distribution, which picked another token"
    )


def explain_divergence(a: list[Step], b: list[Step], texts: dict[int, str], names: tuple[str, str] = ("A", "B")) -> str:
    """Plain sentences on where two completions of the same prompt part and why."""
    pos = first_divergence(a, b)
    if pos is None:
        return f"{names[0]} and {names[1]} produced exactly the same {len(a)} token{'s' * (len(a) != 1)}."
    agree = "The texts part at the first token" if pos == 0 else f"The texts agree for {pos} token{'s' * (pos != 1)} and part at token {pos}"
    if pos >= len(a) or pos >= len(b):
        shorter = names[0] if pos >= len(a) else names[1]
        return f"{agree}: {shorter} ended while the other went on."
    sa, sb = a[pos], b[pos]
    ta, tb = token_label(texts, sa["token_id"]), token_label(texts, sb["token_id"])
    text = (
        f"{agree}: {names[0]} chose '{ta}', {names[1]} chose '{tb}'. In {names[0]}, {why_not(sa, sb['token_id'], texts)}. "
        f"In {names[1]}, {why_not(sb, sa['token_id'], texts)}."
    )
    both_possible = removed_by(sa, sb["token_id"]) is None and removed_by(sb, sa["token_id"]) is None
    if both_possible and sa["draw"] is not None and sb["draw"] is not None:
        text += " " + _why_the_draws_differ(sa, sb)
    return text


def _why_the_draws_differ(sa: Step, sb: Step) -> str:
    """Both tokens were possible in both runs and both drew: was it the random number or a stage?"""
    if abs(sa["draw"] - sb["draw"]) > 1e-9:
        return (f"The runs drew different random numbers ({sa['draw']:.3f} and {sb['draw']:.3f}): a different seed, "
                f"or a different completion of the same seed.")
    stage = changed_stage(sa, sb, (sa["token_id"], sb["token_id"]))
    if stage == "raw":
        return ("Both runs drew the same random number, but the model's own probabilities already differed a little "
                "(a batch of another shape changes the low bits of its arithmetic), so it fell on different tokens.")
    what = f"{STAGE_LABELS[stage]} reshaped the distribution differently" if stage else "the settings reshaped the distribution"
    return f"Both runs drew the same random number ({sa['draw']:.3f}); {what}, so it fell on different tokens."


def changed_stage(sa: Step, sb: Step, ids: tuple[int, ...]) -> str | None:
    """The first stage, in A's order, after which one of these tokens has another probability in B
    (None if no recorded probability tells them apart)."""
    names_b = [st["name"] for st in sb["stages"]]
    prob_a = {t: candidate_probs(sa, t) for t in ids}
    prob_b = {t: candidate_probs(sb, t) for t in ids}
    for s, st in enumerate(sa["stages"]):
        if st["name"] not in names_b:
            return st["name"]  # a stage only A ran (the constraint)
        t_b = names_b.index(st["name"])
        for t in ids:
            if prob_a[t] is not None and prob_b[t] is not None and abs(prob_a[t][s] - prob_b[t][t_b]) > 5e-6:
                return st["name"]
    return None


def explain_replay(recorded: Step, mine: Step, other: Step, texts: dict[int, str], other_name: str) -> str:
    """Plain sentences on a replayed step: what this run's order and another engine's order pick with the
    same random number, and how their final distributions differ."""
    def picked(step: Step) -> str:
        j = step["candidates"].index(step["token_id"])
        return f"'{token_label(texts, step['token_id'])}' (p = {step['stages'][-1]['probs'][j]:.3f})"

    u = "greedy, no random number" if mine["draw"] is None else f"the same random number {mine['draw']:.3f}"
    kept_mine, kept_other = mine["stages"][-1]["kept"], other["stages"][-1]["kept"]
    if mine["token_id"] == other["token_id"]:
        text = f"With {u}, both orders pick {picked(mine)}."
    else:
        text = f"With {u}, this run's order picks {picked(mine)}; {other_name}'s order would pick {picked(other)}."
    if kept_mine != kept_other:
        text += f" The final distribution keeps {kept_mine} tokens in this run's order and {kept_other} in {other_name}'s."
    else:
        text += f" Both final distributions keep {kept_mine} token{'s' * (kept_mine != 1)}."
    if recorded["token_id"] != mine["token_id"] and not recorded.get("forced"):
        text += (f" (Recomputed from the prompt, the step's logits differ a little from the run's, which drew "
                 f"'{token_label(texts, recorded['token_id'])}' here.)")
    return text


def explain_what_if(recorded: Step, shown: Step, texts: dict[int, str], changes: list[str]) -> str:
    """Plain sentences on a what-if: what the step picks under the current settings, against what the
    run picked, and why (the stage that removed the run's token, or where the random number landed)."""
    def p_final(step: Step, token: int) -> float:
        probs = candidate_probs(step, token)
        return 0.0 if probs is None else probs[-1]

    was, now = recorded["token_id"], shown["token_id"]
    if shown["draw"] is None:
        how = "greedy: the most likely token"
    elif recorded.get("draw") is None:
        how = f"random number {shown['draw']:.3f}, the run's own for this step"
    else:
        how = f"same random number {shown['draw']:.3f}"
    if not changes:
        head = "These are the run's own settings: the step as it was recorded."
    else:
        head = "Changed: " + ", ".join(changes) + "."
    if now == was:
        text = (f"With these settings this step still picks '{token_label(texts, now)}' ({how}); its final p "
                f"{p_final(recorded, was):.3f} → {p_final(shown, now):.3f}.")
    else:
        text = (f"With these settings this step would pick '{token_label(texts, now)}' instead of "
                f"'{token_label(texts, was)}' ({how}). {_sentence(why_not(shown, was, texts))}.")
    return f"{head} {text}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
