"""Every sampler stage, known in one place: its function, knobs, off test, whether it removes tokens or
needs history, its label, and the sentence that says what it did at a recorded step.

The sampler (engine/sampler.py), the recorder, the knob registry, the API schema, the UI's controls,
figures and sentences all read `STAGES`. Adding a stage is one entry here plus its tests.

A stage function is `(logits (B, V) float32, ctx) -> logits (B, V)`: pure (it never writes into its
input: the "before" picture must stay true), per row (a row whose knob is off keeps its logits bit for
bit), and it returns its input object itself when no row uses it, so the recorder skips the snapshot.
Removed tokens get -inf.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from engine.context import (
    FLOAT32_MAX, NEG_INF, SamplerContext, canonical_head, most_survivors, row_sum, saturate, survivor_ids, survivors,
)
from engine.dry import dry, uses_dry
from engine.knob import Knob
from engine.rng import uniform

# Temperatures from here up are float32 normal numbers: a row with a smaller one divides in float64.
TINY_TEMPERATURE = 1e-30
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # the smallest normal float32
FLOAT64_MAX = sys.float_info.max
ANY_VOCAB = sys.maxsize  # for off tests where the vocabulary size is unknown (the UI's saved runs)


@dataclass(frozen=True)
class Said:
    """What a sentence sees of one stage at one recorded step: plain data, as the UI keeps it."""

    prev: dict  # the previous stage's record {name, probs, entropy, kept, removed_mass}
    cur: dict
    step: dict  # Step.to_dict() (+ "shown")
    texts: dict[int, str]  # token id -> text
    params: Any  # SamplingParams of the run

    def token(self, token_id: int) -> str:
        return token_label(self.texts, token_id)

    @property
    def kept(self) -> str:
        return count(self.cur["kept"], "token")

    def note(self, name: str) -> float | None:
        return (self.step.get("notes") or {}).get(name)


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # in sentences and chart rows: "top-p"
    apply: Callable[[torch.Tensor, SamplerContext], torch.Tensor]
    knobs: tuple[Knob, ...]
    on: Callable[[Any, int], bool]  # does a row with these params use it (V: the vocabulary size)
    truncates: bool  # may remove tokens (turn a finite logit into -inf)
    history: bool  # reads what came before (penalties, DRY, mirostat's state)
    setting: Callable[[Any], str]  # the knobs' values for a chart title: " 0.9"
    describe: Callable[[Said], str]  # one sentence: what it did at a step, when it was on
    # Stateful stages learn from the token drawn: (ctx, this stage's output logits, tokens (B,)) -> None.
    after_draw: Callable[[SamplerContext, torch.Tensor, torch.Tensor], None] | None = None

    def __call__(self, logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
        return self.apply(logits, ctx)


# --- words -------------------------------------------------------------------------------------


def visible(text: str) -> str:
    """Token text with its whitespace made visible, for chart labels and lists."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def token_label(texts: dict[int, str], token_id: int) -> str:
    return visible(texts.get(token_id, f"#{token_id}"))


def count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _cut(said: Said, setting: str, rule: str = "") -> str:
    """The sentence of a truncation: what it kept, and the mass that held."""
    if said.cur["removed_mass"] == 0:
        return f"{setting} removed nothing here: {said.kept} still possible."
    return f"{setting} kept {said.kept}{rule} holding {1.0 - said.cur['removed_mass']:.2f} of the mass."


def _biggest_drop(said: Said, what: str) -> str:
    """The sentence of a penalty: name the candidate it pushed down the most."""
    drops = [(said.prev["probs"][j] - said.cur["probs"][j], j) for j in range(len(said.step["candidates"]))]
    drop, j = max(drops)
    if drop < 0.005:
        return f"{what}; no top candidate changed by more than 0.005."
    return (f"{what}; the biggest drop: '{said.token(said.step['candidates'][j])}' "
            f"{said.prev['probs'][j]:.3f} → {said.cur['probs'][j]:.3f}.")


# --- the constraint (not a knob: a grammar or a thinking budget turns it on) ---------------------


def constraint(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.allowed is None:
        return logits
    return logits.masked_fill(~ctx.allowed, NEG_INF)


def _describe_constraint(said: Said) -> str:
    if said.cur["removed_mass"] == 0 and said.cur["kept"] == said.prev["kept"]:
        return "the constraint (grammar or forced tokens) allowed every token here."
    return (f"the constraint (grammar or forced tokens) allowed {said.kept} and removed "
            f"{said.cur['removed_mass']:.2f} of the mass.")


CONSTRAINT = Stage("constraint", "the constraint", constraint, (), lambda p, V: False, truncates=True, history=True,
                   setting=lambda p: " (grammar or forced tokens)", describe=_describe_constraint)


# --- logit bias ----------------------------------------------------------------------------------


def logit_bias(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.bias is None:  # no row has a bias; rows without one add zeros
        return logits
    return logits + ctx.bias


def _describe_bias(said: Said) -> str:
    parts = []
    biases = list(said.params.logit_bias)
    for tid, bias in biases[:3]:
        cands = said.step["candidates"]
        j = cands.index(tid) if tid in cands else None
        where = f" (p {said.prev['probs'][j]:.3f} → {said.cur['probs'][j]:.3f})" if j is not None else " (still outside the top candidates)"
        parts.append(f"{bias:+g} to '{said.token(tid)}'{where}")
    more = f" and {len(biases) - 3} more" if len(biases) > 3 else ""
    return f"logit bias added {', '.join(parts)}{more}."


LOGIT_BIAS = Stage(
    "logit_bias", "logit bias", logit_bias,
    (Knob("logit_bias", "logit_bias", None, "Map of token id to a bias in [-100, 100] added to that token's logit; -100 bans it, 100 all but forces it.",
          "advanced", lo=-100.0, hi=100.0, off=None),),
    on=lambda p, V: bool(p.logit_bias), truncates=False, history=False,
    setting=lambda p: f" ({count(len(p.logit_bias), 'token')})", describe=_describe_bias,
)


# --- penalties -----------------------------------------------------------------------------------


def repetition_penalty(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # CTRL (Keskar et al. 2019): a seen token's logit is divided by theta when positive and multiplied
    # when negative, so theta > 1 always makes it less likely.
    # The result saturates at float32's range: theta = 1e-50 pushes a positive logit to +FLOAT32_MAX.
    if "repetition_penalty" not in ctx.knobs.on:
        return logits
    theta = ctx.knobs.col("repetition_penalty")  # (B, 1)
    penalized = torch.where(logits > 0, logits / theta, logits * theta)
    below = (ctx.knobs.col("repetition_penalty", torch.float64) < FLOAT32_TINY).squeeze(1)
    if bool(below.any()):
        # Below float32's normal range theta loses its digits (or becomes 0): those rows work in float64.
        x, t = logits[below].double(), ctx.knobs.col("repetition_penalty", torch.float64)[below]
        penalized[below] = saturate(torch.where(x > 0, x / t, x * t), logits[below])
    return torch.where(ctx.seen, saturate(penalized, logits), logits)


REPETITION_PENALTY = Stage(
    "repetition_penalty", "repetition penalty", repetition_penalty,
    (Knob("repetition_penalty", "float", 1.0, "CTRL's penalty on every token seen in prompt or output: positive logits divided by it, negative multiplied; 1 is off.",
          "repetition", lo=0.0, hi=2.0, lo_open=True, hi_open=True, off=1.0, step=0.01, openai=False),),
    on=lambda p, V: p.repetition_penalty != 1.0, truncates=False, history=True,
    setting=lambda p: f" {p.repetition_penalty:g}",
    describe=lambda s: _biggest_drop(s, f"repetition penalty {s.params.repetition_penalty:g} made tokens already in the prompt or output less likely"),
)


def presence_frequency(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # OpenAI: mu[j] -= c[j] * alpha_frequency + float(c[j] > 0) * alpha_presence, c over generated tokens.
    k = ctx.knobs
    if "presence_frequency" not in k.on:
        return logits
    return logits - k.col("frequency_penalty") * ctx.counts - k.col("presence_penalty") * (ctx.counts > 0).float()


PRESENCE_FREQUENCY = Stage(
    "presence_frequency", "presence/frequency", presence_frequency,
    (Knob("presence_penalty", "float", 0.0, "Subtracted once from the logit of every token already generated (OpenAI); negative values encourage repeats.",
          "repetition", lo=-2.0, hi=2.0, off=0.0, step=0.05),
     Knob("frequency_penalty", "float", 0.0, "Subtracted from a token's logit once per time it was already generated (OpenAI).",
          "repetition", lo=-2.0, hi=2.0, off=0.0, step=0.05)),
    on=lambda p, V: p.presence_penalty != 0.0 or p.frequency_penalty != 0.0, truncates=False, history=True,
    setting=lambda p: f" ({p.presence_penalty:g} / {p.frequency_penalty:g})",
    describe=lambda s: _biggest_drop(s, f"presence {s.params.presence_penalty:g} / frequency {s.params.frequency_penalty:g} penalties shifted tokens already generated"),
)


# --- temperature ---------------------------------------------------------------------------------


def temperature(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Divide the logits by t; 0 is greedy. With dynatemp_range d > 0, t follows the distribution's
    entropy (llama.cpp's `temp_ext`, src/llama-sampling.cpp): from max(0, t - d) for a certain
    distribution to t + d for a flat one, as min + (max - min) * (H / log n) ** dynatemp_exponent over
    the n survivors; with one survivor nothing changes."""
    k = ctx.knobs
    if "temperature" not in k.on:
        return logits
    t = k.col("temperature", torch.float64)  # (B, 1)
    if any(d > 0 for d in k.values("dynatemp_range")):
        t = _dynamic_temperature(logits, ctx, t)
    out = logits / t.clamp(TINY_TEMPERATURE, FLOAT32_MAX).float()  # exact where t is in range; others below
    overflowed = (torch.isinf(out) & (logits > NEG_INF)).any(dim=-1)  # a logit an earlier stage saturated
    wide = ((t < TINY_TEMPERATURE) | (t > FLOAT32_MAX)).squeeze(1) | overflowed
    wide &= ~k.greedy
    if bool(wide.any()):
        # Such a row is shifted by its maximum first, which softmax cannot see, and divided in float64:
        # (x - max) / t is at most 0 and saturates at -FLOAT32_MAX. A dynamic temperature of 0 keeps the
        # top tokens only, as llama.cpp's greedy branch does.
        x, tw = logits[wide].double(), t[wide]
        shifted = x - x.amax(dim=-1, keepdim=True)
        cooled = torch.where(shifted == 0, 0.0, shifted / tw)
        out[wide] = torch.where(tw > 0, saturate(cooled, logits[wide]), cooled.float())
    if bool(k.greedy.any()):
        # Greedy by an explicit argmax (ties to the lower id), never a division by a tiny number.
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        only_best = torch.full_like(logits, NEG_INF).scatter(1, best, logits.gather(1, best))
        out = torch.where(k.greedy[:, None], only_best, out)
    return out


def _dynamic_temperature(logits: torch.Tensor, ctx: SamplerContext, t: torch.Tensor) -> torch.Tensor:
    k = ctx.knobs
    d = k.col("dynatemp_range", torch.float64)
    n = survivors(logits).double()[:, None]  # (B, 1)
    p = torch.softmax(logits.double(), dim=-1)
    h = -row_sum(torch.where(p > 0, p * p.log(), 0.0))[:, None]
    normalised = (h / n.clamp(min=2).log()).clamp(0.0, 1.0)  # rounding may pass 1, and 1.0001 ** 1e300 is inf
    low, high = (t - d).clamp(min=0.0), t + d  # finite: t <= 2 and d <= float64's max
    dynamic = low + (high - low) * normalised.pow(k.col("dynatemp_exponent", torch.float64))
    use = (d > 0) & (n > 1) & ~k.greedy[:, None]  # temperature 0 is greedy: an argmax uses no temperature
    # One survivor: llama.cpp leaves the logits alone, and dividing them would change nothing anyway.
    t = torch.where(use, dynamic, torch.where((d > 0) & (n <= 1), 1.0, t))
    ctx.note("temperature_used", torch.where(use, t, torch.nan).squeeze(1))
    return t


def _describe_temperature(said: Said) -> str:
    t = said.params.temperature
    if t == 0:
        return f"temperature 0 is greedy: only '{said.token(said.step['token_id'])}', the top token, remains."
    used = said.note("temperature_used")
    if used is not None:
        d = said.params.dynatemp_range
        return (f"dynamic temperature {t:g} ± {d:g} followed the entropy and used {used:.2f}: entropy "
                f"{said.prev['entropy']:.2f} → {said.cur['entropy']:.2f} nats.")
    verb = "sharpened" if t < 1 else "flattened"
    return f"temperature {t:g} {verb} the distribution: entropy {said.prev['entropy']:.2f} → {said.cur['entropy']:.2f} nats."


def _temperature_setting(p: Any) -> str:
    return f" {p.temperature:g} ± {p.dynatemp_range:g}" if p.dynatemp_range > 0 and p.temperature > 0 else f" {p.temperature:g}"


TEMPERATURE = Stage(
    "temperature", "temperature", temperature,
    (Knob("temperature", "float", 1.0, "Divides the logits before softmax: below 1 sharpens, above 1 flattens; 0 is greedy (always the top token).",
          "randomness", lo=0.0, hi=2.0, off=1.0, step=0.05),
     Knob("dynatemp_range", "float", 0.0, "Dynamic temperature (llama.cpp, text-generation-webui): t follows the entropy between temperature - range (a certain distribution) and temperature + range (a flat one); 0 is off.",
          "more samplers", lo=0.0, hi=None, off=0.0, step=0.05, openai=False),
     Knob("dynatemp_exponent", "float", 1.0, "How the dynamic temperature follows the entropy: (entropy / its maximum) ** exponent.",
          "more samplers", lo=0.0, hi=None, off=1.0, step=0.05, openai=False)),
    # t = 0 keeps only the argmax; a dynamic temperature can reach 0 too.
    on=lambda p, V: p.temperature != 1.0 or (p.dynatemp_range > 0 and p.temperature > 0), truncates=True, history=False,
    setting=_temperature_setting, describe=_describe_temperature,
)


# --- truncations ---------------------------------------------------------------------------------


def top_k(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if "top_k" not in ctx.knobs.on:
        return logits
    k = ctx.knobs.col("top_k", torch.int64)
    off = (k == 0) | (k >= logits.shape[-1])  # (B, 1)
    k = torch.where(off, 1, k)
    # Exactly k survive: ties with the k-th logit go to the lower token ids, the same rule argmax uses,
    # so top_k = 1 is greedy even where bf16 logits tie (Hugging Face keeps every tied token instead).
    kth = logits.topk(int(k.max()), dim=-1).values.gather(1, k - 1)  # (B, 1)
    keep = logits >= kth
    if bool((keep.sum(dim=-1, keepdim=True) > k).any()):  # a tie at the k-th place somewhere
        above = logits > kth
        tied = logits == kth
        room = k - above.sum(dim=-1, keepdim=True)
        keep = above | (tied & (tied.cumsum(dim=-1) <= room))
    return logits.masked_fill(~(keep | off), NEG_INF)


TOP_K = Stage(
    "top_k", "top-k", top_k,
    (Knob("top_k", "int", 0, "Keep only the k most likely tokens; 0 keeps all.",
          "randomness", lo=0, hi=None, off=0, step=1, openai=False),),
    on=lambda p, V: 0 < p.top_k < V, truncates=True, history=False,
    setting=lambda p: f" {p.top_k}", describe=lambda s: _cut(s, f"top-k {s.params.top_k}"),  # any int: 10**400 has no :g
)


def top_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if "top_p" not in ctx.knobs.on:
        return logits
    p = ctx.knobs.col("top_p", torch.float64)
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = canonical_head(probs, logits, most_survivors(logits))
    # The mass above each token, summed in float64 in the canonical order: the same prefix whatever the
    # width of the head, so a row's cut never depends on its neighbours.
    above = sorted_probs.double().cumsum(dim=-1) - sorted_probs.double()
    # A token survives while the mass above it is still short of p; the top token always does, and a
    # token of probability 0 never adds anything, so it never does.
    return _keep_in_order(logits, order, (above < p) & (sorted_probs > 0), off=p >= 1.0)


def _keep_in_order(logits: torch.Tensor, order: torch.Tensor, keep_sorted: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """Truncate to the tokens `keep_sorted` marks in `order` (B, m), always keeping the first of each row
    (at least one token survives); rows where `off` (B, 1) keep everything."""
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, keep_sorted)
    return logits.masked_fill(~(keep | off), NEG_INF)


TOP_P = Stage(
    "top_p", "top-p", top_p,
    (Knob("top_p", "float", 1.0, "Nucleus sampling: keep the fewest top tokens whose probabilities add up to at least top_p.",
          "randomness", lo=0.0, hi=1.0, lo_open=True, off=1.0, step=0.01),),
    on=lambda p, V: p.top_p < 1.0, truncates=True, history=False,
    setting=lambda p: f" {p.top_p:g}", describe=lambda s: _cut(s, f"top-p {s.params.top_p:g}"),
)


def min_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # Nguyen et al. 2024: keep tokens with p >= min_p * p_max.
    if "min_p" not in ctx.knobs.on:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = ctx.knobs.col("min_p") * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


MIN_P = Stage(
    "min_p", "min-p", min_p,
    (Knob("min_p", "float", 0.0, "Keep tokens at least min_p times as likely as the most likely one (min-p sampling, Nguyen et al. 2024); 0 keeps all.",
          "randomness", lo=0.0, hi=1.0, off=0.0, step=0.01, openai=False),),
    on=lambda p, V: p.min_p > 0.0, truncates=True, history=False,
    setting=lambda p: f" {p.min_p:g}",
    describe=lambda s: _cut(s, f"min-p {s.params.min_p:g}", f" (those with p ≥ {s.params.min_p:g} × {max(s.prev['probs']):.2f})"),
)


def typical_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022, "Locally Typical Sampling"), as llama.cpp's `typical`
    (src/llama-sampling.cpp) and Hugging Face's TypicalLogitsWarper: order tokens by how far their
    surprise -log p is from the entropy H, and keep the closest until their mass passes typical_p (the
    token that passes it included; at least one)."""
    if "typical_p" not in ctx.knobs.on:
        return logits
    mass = ctx.knobs.col("typical_p", torch.float64)
    p = torch.softmax(logits.double(), dim=-1)
    h = -row_sum(torch.where(p > 0, p * p.log(), 0.0))[:, None]  # (B, 1) nats
    distance = torch.where(p > 0, (-p.log() - h).abs(), torch.inf)  # removed tokens last
    # Survivors by id, then stably by distance: ties go to the lower id whatever the width.
    ids = survivor_ids(logits)
    closest, j = distance.gather(1, ids).sort(dim=-1, stable=True)
    order = ids.gather(1, j)
    kept_mass = p.gather(1, order).cumsum(dim=-1)
    before = kept_mass - p.gather(1, order)
    # Up to and including the token that passes typical_p.
    return _keep_in_order(logits, order, (before <= mass) & torch.isfinite(closest), off=mass >= 1.0)


TYPICAL_P = Stage(
    "typical_p", "typical-p", typical_p,
    (Knob("typical_p", "float", 1.0, "Locally typical sampling (Meister et al. 2022): keep the tokens whose surprise is closest to the entropy, up to this much mass; 1 is off.",
          "more samplers", lo=0.0, hi=1.0, lo_open=True, off=1.0, step=0.01, openai=False),),
    on=lambda p, V: p.typical_p < 1.0, truncates=True, history=False,
    setting=lambda p: f" {p.typical_p:g}",
    describe=lambda s: _cut(s, f"typical-p {s.params.typical_p:g}", " (the surprise closest to the entropy)"),
)


def top_n_sigma(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need"), as llama.cpp's `top_n_sigma`
    (src/llama-sampling.cpp): keep logits >= max - n·σ, σ the standard deviation of the survivors'
    logits (over n, not n - 1); n = 0 is off."""
    if "top_n_sigma" not in ctx.knobs.on:
        return logits
    n = ctx.knobs.col("top_n_sigma", torch.float64)
    alive = logits > NEG_INF
    count = survivors(logits).double()[:, None]
    x = torch.where(alive, logits.double(), 0.0)
    mean = row_sum(x)[:, None] / count
    sigma = (row_sum(torch.where(alive, (x - mean) ** 2, 0.0))[:, None] / count).sqrt()
    top = logits.amax(dim=-1, keepdim=True).double()
    keep = logits.double() >= top - n * sigma
    return logits.masked_fill(~(keep | (n <= 0) | (count <= 1)), NEG_INF)


TOP_N_SIGMA = Stage(
    "top_n_sigma", "top-nσ", top_n_sigma,
    (Knob("top_n_sigma", "float", 0.0, "Top-nσ (Tang et al. 2024): keep the tokens whose logit is within n standard deviations of the largest; 0 is off.",
          "more samplers", lo=0.0, hi=None, off=0.0, step=0.05, openai=False),),
    on=lambda p, V: p.top_n_sigma > 0, truncates=True, history=False,
    setting=lambda p: f" {p.top_n_sigma:g}",
    describe=lambda s: _cut(s, f"top-nσ {s.params.top_n_sigma:g}", " (logits within nσ of the largest)"),
)


XTC_STREAM = 1  # XTC's coin in the completion's random numbers (the draw is stream 0)


def xtc(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Exclude Top Choices (XTC), as llama.cpp's `xtc` (src/llama-sampling.cpp) and text-generation-
    webui's XTCLogitsWarper: with probability xtc_probability, remove every token whose probability is at
    least xtc_threshold except the least likely of them, so a less obvious choice gets its chance. Does
    nothing when fewer than two tokens reach the threshold (so never when it is above 0.5). The coin is
    the row's own random number (seed, completion, position, stream 1)."""
    if "xtc" not in ctx.knobs.on:
        return logits
    chance = ctx.knobs.col("xtc_probability", torch.float64)
    threshold = ctx.knobs.col("xtc_threshold")
    coin = torch.tensor([uniform(seed, i, pos, XTC_STREAM) for seed, i, pos in ctx.coords], dtype=torch.float64,
                        device=logits.device)[:, None]
    # (B, 1): llama.cpp returns early when its probability is <= 0, and acts unless its chance is above it.
    fires = (chance > 0) & (coin <= chance)
    probs = torch.softmax(logits, dim=-1)
    top = (probs >= threshold) & (logits > NEG_INF)  # among the survivors
    reached = top.sum(dim=-1, keepdim=True)  # (B, 1)
    # The least likely token at or above the threshold stays (ties: the higher id, the last in the canonical order).
    least = torch.where(top, probs, torch.inf).amin(dim=-1, keepdim=True)
    last = (top & (probs == least)).int().cumsum(dim=-1)
    keeper = (probs == least) & (last == last[:, -1:])
    remove = top & ~keeper & fires & (reached >= 2)
    on = ((chance > 0) & (threshold <= 0.5)).squeeze(1)  # rows where XTC is off beside rows where it is on say nothing
    ctx.note("xtc_coin", torch.where(on, fires.squeeze(1).double(), torch.nan))
    ctx.note("xtc_reached", torch.where(on, reached.squeeze(1).double(), torch.nan))
    return logits.masked_fill(remove, NEG_INF)


def _describe_xtc(said: Said) -> str:
    setting = f"XTC ({said.params.xtc_probability:g} chance, threshold {said.params.xtc_threshold:g})"
    if said.cur["removed_mass"] == 0:
        coin, reached = said.note("xtc_coin"), said.note("xtc_reached")
        if coin is None or reached is None:  # a record from before these notes
            why = "its coin said no, or fewer than two tokens reached the threshold"
        elif not coin:
            why = "its coin said no"
        else:
            why = f"its coin said yes, but only {count(int(reached), 'token')} reached the threshold"
        return f"{setting} removed nothing here: {why}."
    return f"{setting} removed the top choices above the threshold but the least likely of them: {said.cur['removed_mass']:.2f} of the mass."


XTC = Stage(
    "xtc", "XTC", xtc,
    (Knob("xtc_probability", "float", 0.0, "XTC, exclude top choices: how often (per token) to remove every token at least xtc_threshold likely except the least likely of them; 0 is off.",
          "more samplers", lo=0.0, hi=1.0, off=0.0, step=0.01, openai=False),
     Knob("xtc_threshold", "float", 0.1, "XTC: the probability a top choice must reach to be removed (above 0.5, XTC never removes anything).",
          "more samplers", lo=0.0, hi=1.0, off=0.1, step=0.01, openai=False)),
    on=lambda p, V: p.xtc_probability > 0 and p.xtc_threshold <= 0.5, truncates=True, history=False,
    setting=lambda p: f" ({p.xtc_probability:g} / {p.xtc_threshold:g})", describe=_describe_xtc,
)


DRY = Stage(
    "dry", "DRY", dry,
    (Knob("dry_multiplier", "float", 0.0, "DRY (don't repeat yourself): how hard to push down a token that would extend a repeat of earlier text; 0 is off.",
          "repetition", lo=0.0, hi=None, off=0.0, step=0.05, openai=False),
     Knob("dry_base", "float", 1.75, "DRY: the penalty grows as base ** (repeat length - allowed length).",
          "repetition", lo=1.0, hi=None, off=1.75, step=0.05, openai=False),
     Knob("dry_allowed_length", "int", 2, "DRY: repeats up to this many tokens are free.",
          "repetition", lo=1, hi=None, off=2, step=1, openai=False),
     Knob("dry_sequence_breakers", "strings", ("\n", ":", "\"", "*"), "DRY: strings that end a repeat (each is matched as a token).",
          "repetition", off=("\n", ":", "\"", "*"), openai=False),
     Knob("dry_penalty_last_n", "int", -1, "DRY: how many of the last tokens (prompt included) to look back over; -1 is all of them, 0 turns DRY off (llama.cpp).",
          "repetition", lo=-1, hi=None, off=-1, step=1, openai=False)),
    on=lambda p, V: uses_dry(p), truncates=False, history=True,
    setting=lambda p: f" ({p.dry_multiplier:g} × {p.dry_base:g}^(n - {p.dry_allowed_length}))",
    describe=lambda s: _biggest_drop(s, f"DRY {s.params.dry_multiplier:g} pushed down tokens that would continue a repeat"),
)


def mirostat(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Mirostat 2.0 (Basu et al. 2021), as llama.cpp's `mirostat_v2` (src/llama-sampling.cpp): keep the
    tokens whose surprise -log2 p is at most mu (at least one); after the draw, mu moves toward the target
    surprise mirostat_tau by mirostat_eta times the error (after_draw). Each completion keeps its own mu,
    starting at 2 * tau."""
    if "mirostat" not in ctx.knobs.on:
        return logits
    tau = ctx.knobs.col("mirostat_tau", torch.float64)
    mu = torch.tensor([m.get("mirostat_mu", _first_mu(t)) for m, t in zip(ctx.memory, tau.squeeze(1).tolist())],
                      dtype=torch.float64, device=logits.device)[:, None]
    on = ctx.knobs.col("mirostat", torch.int64) == 2
    ctx.note("mirostat_mu", torch.where(on, mu, torch.nan).squeeze(1))
    surprise = -torch.log2(torch.softmax(logits.double(), dim=-1))
    keep = (surprise <= mu) | (logits == logits.amax(dim=-1, keepdim=True))
    return logits.masked_fill(~(keep | ~on), NEG_INF)


def _mirostat_learn(ctx: SamplerContext, out: torch.Tensor, tokens: torch.Tensor) -> None:
    """mu <- mu - eta * (surprise of the token drawn, under the truncated distribution - tau)."""
    logp = torch.log_softmax(out.double(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
    surprise = -logp / torch.log(torch.tensor(2.0, dtype=torch.float64))
    ctx.note("mirostat_surprise", surprise.where(torch.tensor([p.mirostat == 2 for p in ctx.knobs.params]), torch.nan))
    for b, p in enumerate(ctx.knobs.params):
        if p.mirostat == 2:
            mu = ctx.memory[b].get("mirostat_mu", _first_mu(p.mirostat_tau))
            ctx.memory[b]["mirostat_mu"] = _finite(mu - p.mirostat_eta * (float(surprise[b]) - p.mirostat_tau))


def _first_mu(tau: float) -> float:
    """mu starts at 2 * tau, saturated at float64's limit (tau = 1e308 keeps every token, and a trace's
    JSON cannot carry inf)."""
    return _finite(2 * tau)


def _finite(x: float) -> float:
    return min(max(x, -FLOAT64_MAX), FLOAT64_MAX)


def _describe_mirostat(said: Said) -> str:
    mu, surprise = said.note("mirostat_mu"), said.note("mirostat_surprise")
    text = (f"mirostat (target surprise {said.params.mirostat_tau:g} bits) kept {said.kept} with surprise ≤ μ = {mu:.2f} bits")
    if surprise is not None:
        text += f"; the token drawn had surprise {surprise:.2f}, so μ moves by {-said.params.mirostat_eta * (surprise - said.params.mirostat_tau):+.2f}"
    return text + "."


MIROSTAT = Stage(
    "mirostat", "mirostat", mirostat,
    (Knob("mirostat", "choice", 0, "Mirostat (Basu et al. 2021): 2 keeps each token's surprise near mirostat_tau by learning a cut-off μ as it goes; 0 is off (version 1 is not offered).",
          "more samplers", off=0, choices=(0, 2), openai=False),
     Knob("mirostat_tau", "float", 5.0, "Mirostat: the target surprise, in bits per token.",
          "more samplers", lo=0.0, hi=None, lo_open=True, off=5.0, step=0.1, openai=False),
     Knob("mirostat_eta", "float", 0.1, "Mirostat: how fast μ learns.",
          "more samplers", lo=0.0, hi=1.0, off=0.1, step=0.01, openai=False)),
    on=lambda p, V: p.mirostat == 2, truncates=True, history=True,
    setting=lambda p: f" (τ {p.mirostat_tau:g}, η {p.mirostat_eta:g})", describe=_describe_mirostat,
    after_draw=_mirostat_learn,
)


# --- the registry --------------------------------------------------------------------------------

# In the default order, Hugging Face's and vLLM's for the stages they have: edits to the logits before
# temperature, so temperature shapes what the truncations then see; the samplers they lack come after,
# mirostat last (it learns from the token drawn). llama.cpp puts temperature last: the order is a knob.
STAGES: dict[str, Stage] = {s.name: s for s in (
    LOGIT_BIAS, REPETITION_PENALTY, PRESENCE_FREQUENCY, DRY, TEMPERATURE, TOP_K, TOP_P, MIN_P, TYPICAL_P,
    TOP_N_SIGMA, XTC, MIROSTAT,
)}
DEFAULT_ORDER: tuple[str, ...] = tuple(STAGES)
ALL: dict[str, Stage] = {"constraint": CONSTRAINT, **STAGES}  # every stage a record can name
STAGE_KNOBS: tuple[Knob, ...] = tuple(k for s in STAGES.values() for k in s.knobs)

# Each engine's own default order, for the stages it has; the ones it lacks sit where they do the least
# surprising thing (after the truncations it has, mirostat last). Sources: Hugging Face transformers
# generation/utils.py `_get_logits_processor` (processors, then temperature, top_k, top_p, min_p, typical);
# vLLM v1/sample/sampler.py (logits processors with logit_bias, penalties, temperature, min_p, then
# top_k/top_p); llama.cpp common/common.h default `samplers` (penalties, dry, top_n_sigma, top_k,
# typ_p, top_p, min_p, xtc, temperature; logit bias first, mirostat in place of the final draw);
# text-generation-webui modules/shared.py `sampler_priority` (repetition, presence, frequency, dry,
# top_n_sigma, temperature (dynamic included), top_k, top_p, typical_p, min_p, mirostat, xtc).
PRESETS: dict[str, tuple[str, ...]] = {
    "Hugging Face": DEFAULT_ORDER,
    "vLLM": ("logit_bias", "repetition_penalty", "presence_frequency", "dry", "temperature", "min_p", "top_k", "top_p",
             "typical_p", "top_n_sigma", "xtc", "mirostat"),
    "llama.cpp": ("logit_bias", "repetition_penalty", "presence_frequency", "dry", "top_n_sigma", "top_k", "typical_p",
                  "top_p", "min_p", "xtc", "temperature", "mirostat"),
    "text-generation-webui": ("logit_bias", "repetition_penalty", "presence_frequency", "dry", "top_n_sigma", "temperature",
                              "top_k", "top_p", "typical_p", "min_p", "mirostat", "xtc"),
}
