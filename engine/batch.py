"""The rows that decode together: per-row sampling and recording over the next-token logits that a
backend gives (engine/backend.py), one step for every row at once.

`Batch` holds what every kind of model shares: the rows, their histories (seen, counts, logit_bias), the
pipeline and the draw. What holds the rows' model state and gives their logits is the batch's backend,
chosen once per model (`lm.new_rows()`): `LocalRows` below for a transformers model, `RemoteRows`
(engine/remote.py) for an inference server. The batch never asks which one it holds.

The local rows: ragged rows live in a stock transformers DynamicCache. Rows are right-aligned (left-padded),
the way generate() pads a batch of prompts, with per-row position ids and a 2D padding mask, so every row
writes the same cache column each step. A job joins by padding its prefilled cache (or the batch's) on the left
to the common width and concatenating along the batch; rows that finish are selected out, and columns
no row uses any more are trimmed from the left. This is TGI's transformers fallback (`CausalLMBatch`
with its concatenate and filter). Why not a static cache: a DynamicCache needs no capacity chosen in
advance and works with any model whose layers are plain full-attention layers; models with other cache
layers (sliding windows, linear attention) still run, one job at a time.

Everything per row (knobs, history, grammar, random numbers) follows the row, so a row's tokens do not
depend on which other rows share its batch. That is also what contains a fault: when sampling a group of
rows raises, each job of the group is sampled again on its own; a job that fails alone ends with its
error, and the others keep exactly the tokens they draw alone (`sample` returns the failed jobs).
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine import attention
from engine.model import LoadedModel
from engine.rng import uniform
from engine.rows import RowState
from engine.sampler import STAGES, RowKnobs, SamplerContext, draw, learn, run_pipeline
from engine.trace import Step, record
from engine.whatif import Snapshot

if TYPE_CHECKING:
    from engine.generator import Generation

PREFILL_CHUNK = 512  # prompt tokens per forward pass while a job joins: long prompts cannot stall others
log = logging.getLogger(__name__)


class NonFiniteLogits(ArithmeticError):
    """A row's final logits hold NaN or +inf, or no finite value at all: no token can be drawn from them."""


@dataclass
class Row:
    job: "Generation"
    index: int  # which of the job's n completions
    state: RowState
    position: int  # position in the completion of the token this row draws next
    forced: list[int] = field(default_factory=list)  # prefix tokens still to feed one step at a time
    mask: torch.Tensor | None = None  # (V,) bool: the tokens allowed at position `mask_at` (None: any)
    mask_at: int = -1

    def allowed(self, vocab_size: int) -> torch.Tensor | None:
        """This step's allowed tokens (RowState.allowed), computed once a step: a backend may ask for them
        before the forward pass (`wants`), and the draw takes the same mask, grammar work and `graded` flag."""
        if self.mask_at != self.position:
            self.mask, self.mask_at = self.state.allowed(vocab_size), self.position
        return self.mask


def wanted_ids(job: "Generation", mask: torch.Tensor | None) -> torch.Tensor | None:
    """(k,) int64: the tokens a row of `job` needs the values of this step, whose allowed set is `mask`: that
    set (a grammar's, or a thinking budget's forced token) and the job's logit_bias ids; None: any values do.
    For a backend that knows only some tokens' values (a server's top K), which asks for these."""
    parts = [mask.nonzero().squeeze(1)] if mask is not None else []
    if job.params.logit_bias:
        parts.append(torch.tensor([t for t, _ in job.params.logit_bias], dtype=torch.long))
    return torch.cat(parts) if parts else None


@dataclass
class _Group:
    """Rows that share a pipeline: the same stage list (constraint or not, sampler_order)."""

    constrained: bool
    members: list[int]  # batch rows
    index: torch.Tensor | None  # the same as a tensor; None when the group is the whole batch
    params: list  # each member's SamplingParams
    knobs: RowKnobs | None = None  # built at the group's first draw (a knob that cannot be built fails there)


class Prefill:
    """A job's prompt (and branch prefix) going through the model in chunks, into a cache of its own."""

    def __init__(self, job: "Generation", chunk: int = PREFILL_CHUNK):
        self.job, self.chunk = job, chunk
        # A replay feeds its prefix one decode step at a time (Batch.join), as the run it redoes did.
        self.ids = job.prompt_ids if job.replay_prefix else job.prompt_ids + job.prefix_ids
        self.done = 0
        self.cache = None
        self.logits: torch.Tensor | None = None  # (1, V) once the whole prompt is in

    def advance(self) -> bool:
        """Run the next chunk; True once the whole prompt is in the cache. Chunks always start at multiples
        of `chunk`: where a prompt is cut changes its logits' low bits, so it must not depend on what else
        is joining."""
        lm, store = self.job.lm, self.job.kv_store
        if store is not None and self.cache is None:  # continue a sequence just served (engine/kvstore.py)
            self.done, self.cache, self.logits = store.resume(self.ids)
            if self.logits is not None:
                return True
        piece = self.ids[self.done : self.done + self.chunk]
        positions = torch.arange(self.done, self.done + len(piece), device=lm.device)[None]
        with torch.inference_mode():
            out = forward(lm.model, torch.tensor([piece], device=lm.device), self.cache, position_ids=positions,
                          logits_to_keep=1)
        self.cache = cache_of(out)
        self.done += len(piece)
        if self.done < len(self.ids):
            return False
        self.logits = out.logits[:, -1, :].float()
        if store is not None:
            store.keep(self.ids, self.cache, self.logits)
        return True


class LocalRows:
    """A transformers model's side of the rows (the Rows protocol, engine/backend.py): their KV cache,
    right-aligned with per-row positions, and the forward pass that gives their next logits."""

    known = None  # every logit is the model's own

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self._clear()

    def _clear(self) -> None:
        self.cache = None
        self.mask: torch.Tensor | None = None  # (B, W) bool: the cache columns that hold each row's tokens
        self.length: torch.Tensor | None = None  # (B,) int64: tokens in each row, = its next position id
        self._lengths: list[int] = []  # the same on the host

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def prefill(self, job: "Generation", chunk: int = PREFILL_CHUNK) -> Prefill:
        return Prefill(job, chunk)

    def mergeable(self, cache) -> bool:
        """Whether rows of this cache can share a batch with other jobs' rows: plain full-attention layers
        only (a sliding-window or linear-attention layer keeps state that padding would corrupt)."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))

    def join(self, job: "Generation", cache, n: int) -> None:
        """n rows of a prefilled job come last: `cache` holds its prompt (batch 1). A replay's prefix is not
        in the cache yet (its rows feed it a token a step)."""
        dev = self.lm.device
        if n > 1:
            cache.batch_repeat_interleave(n)
        L = len(job.prompt_ids) + (0 if job.replay_prefix else len(job.prefix_ids))
        mask = torch.ones(n, L, dtype=torch.bool, device=dev)
        length = torch.full((n,), L, dtype=torch.long, device=dev)
        if self.cache is None:
            self.cache, self.mask, self.length = cache, mask, length
        else:
            W = self.width
            if L < W:
                _pad_left(cache, W - L)
                mask = F.pad(mask, (W - L, 0), value=False)
            elif L > W:
                _pad_left(self.cache, L - W)
                self.mask = F.pad(self.mask, (L - W, 0), value=False)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([mine.keys, theirs.keys])
                mine.values = torch.cat([mine.values, theirs.values])
            self.mask = torch.cat([self.mask, mask])
            self.length = torch.cat([self.length, length])
        self._lengths += [L] * n

    def keep(self, keep: list[int]) -> None:
        """Only these rows stay (some leave; never none); columns no row needs any more leave the cache."""
        idx = torch.tensor(keep, device=self.lm.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.length = self.mask[idx], self.length[idx]
        self._lengths = [self._lengths[b] for b in keep]
        unused = self.width - max(self._lengths)
        if unused > 0:
            _trim_left(self.cache, unused)
            self.mask = self.mask[:, unused:]

    def leave_all(self) -> None:
        self._clear()

    def forward(self, tokens: torch.Tensor, wants=None) -> torch.Tensor:
        """Each row's token (B,) through the model: the rows' next logits (B, V) float32. `wants` is not
        asked: every logit is computed."""
        self.mask = F.pad(self.mask, (0, 1), value=True)
        ragged = attention.groups([n + 1 for n in self._lengths]) if len(self._lengths) > 1 else None
        if ragged is None:  # every row as long as the cache: no padding at all
            padding = {}
        elif self.lm.ragged_attention:  # each row attends to its own columns only, exactly as alone
            padding = {"ragged_rows": ragged}
        else:
            padding = {"attention_mask": self.mask}
        with torch.inference_mode():
            out = forward(self.lm.model, tokens[:, None], self.cache, position_ids=self.length[:, None], **padding)
        self.cache = cache_of(out)
        self.length = self.length + 1
        self._lengths = [n + 1 for n in self._lengths]
        return out.logits[:, -1, :].float()  # (B, V)

    def approximate(self, stages: list[tuple[str, torch.Tensor]], members: list[int]) -> list[tuple[str, ...]]:
        return [()] * len(members)  # the whole vocabulary, the model's own logits: every stage exact

    def redraw(self, final: torch.Tensor, chosen: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor,
               members: list[int]) -> list[bool]:
        return [False] * len(members)  # no rest bucket to land in


class Batch:
    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.backend = lm.new_rows()  # chosen once, by the model: the batch never asks which kind it is
        self.rows: list[Row] = []
        self._clear()

    def _clear(self) -> None:
        self.backend.leave_all()
        self.logits: torch.Tensor | None = None  # (B, V) float32: next-token logits not yet sampled
        self.pending: torch.Tensor | None = None  # (B,) tokens drawn but not yet through the model
        self.seen: torch.Tensor | None = None  # (B, V) bool: in the prompt or the output so far
        self.counts: torch.Tensor | None = None  # (B, V) float32: times generated so far
        self.bias: torch.Tensor | None = None  # (B, V) float32 logit_bias; None while no row has one
        self._groups: list[_Group] | None = None
        self._fed_last = False  # some row fed a prefix token last step: the cached groups are stale

    @property
    def width(self) -> int:
        """Token slots each row takes in the backend (the KV cache's width, padding included)."""
        return self.backend.width

    def prefill(self, job: "Generation", chunk: int = PREFILL_CHUNK):
        """The job's prompt going into this kind of model: `.advance()` until True, then `.cache` and
        `.logits` (1, V) for `join`."""
        return self.backend.prefill(job, chunk)

    def mergeable(self, cache) -> bool:
        """Whether the rows of this prefilled cache can share a batch with other jobs' rows."""
        return self.backend.mergeable(cache)

    def jobs(self) -> list["Generation"]:
        return list(dict.fromkeys(row.job for row in self.rows))

    # --- joining and leaving ------------------------------------------------------------------------

    def join(self, job: "Generation", cache, logits: torch.Tensor) -> None:
        """Add the n rows of a prefilled job: `cache` holds its prompt (batch 1), `logits` (1, V) its
        next-token logits. Joins happen between `advance` and `sample`, when every row has its logits.
        A replay's prefix is not in the cache yet: its rows feed it first, a token a step."""
        assert self.pending is None, "advance the batch before a job joins"
        n, V, dev = job.params.n, self.lm.vocab_size, self.lm.device
        history = torch.tensor(job.prompt_ids + job.prefix_ids, device=dev)
        seen = torch.zeros(n, V, dtype=torch.bool, device=dev)
        seen[:, history[history < V]] = True
        counts = torch.zeros(n, V, dtype=torch.float32, device=dev)
        for tok in job.prefix_ids:
            counts[:, tok] += 1
        rows = [Row(job, i, job.row_state(i), len(job.prefix_ids), list(job.prefix_ids) if job.replay_prefix else [])
                for i in range(n)]
        logits = logits.expand(n, V)
        bias = job.dense_bias()
        # Everything above reads only the job; below, the batch changes (a job that cannot join leaves it as it was).
        self.backend.join(job, cache, n)
        if not self.rows:
            self.logits = logits
            self.seen, self.counts = seen, counts
            self.bias = None if bias is None else bias.expand(n, V)
        else:
            self.logits = torch.cat([self.logits, logits])
            self.seen = torch.cat([self.seen, seen])
            self.counts = torch.cat([self.counts, counts])
            if self.bias is not None or bias is not None:
                mine = self.bias if self.bias is not None else torch.zeros(len(self.rows), V, device=dev)
                theirs = bias.expand(n, V) if bias is not None else torch.zeros(n, V, device=dev)
                self.bias = torch.cat([mine, theirs])
        self.rows += rows
        self._groups = None

    def _keep(self, keep: list[int]) -> None:
        """Only these rows stay; columns that no row needs any more leave the cache."""
        if not keep:
            self.rows = []
            self._clear()
            return
        if len(keep) == len(self.rows):
            return
        self.backend.keep(keep)
        idx = torch.tensor(keep, device=self.lm.device)
        if self.logits is not None:
            self.logits = self.logits[idx]
        if self.pending is not None:
            self.pending = self.pending[idx]
        self.seen, self.counts = self.seen[idx], self.counts[idx]
        if self.bias is not None:
            self.bias = self.bias[idx] if any(self.rows[b].job.params.logit_bias for b in keep) else None
        self.rows = [self.rows[b] for b in keep]
        self._groups = None

    def drop_stopped(self) -> list["Generation"]:
        """Rows of jobs asked to stop leave now (finish_reason cancelled, held-back text released).
        Returns those jobs."""
        stopped = [job for job in self.jobs() if job.stopping()]
        if not stopped:
            return []
        keep = []
        for b, row in enumerate(self.rows):
            if row.job in stopped:
                row.job.texts[row.index] += row.state.flush()
                row.job.finish_reasons[row.index] = "cancelled"
            else:
                keep.append(b)
        self._keep(keep)
        return stopped

    # --- one step -----------------------------------------------------------------------------------

    def step(self) -> tuple[dict["Generation", list[Step]], list["Generation"]]:
        """One whole step for rows decoding on their own: stopped jobs leave, the last tokens go through
        the model, every row draws its next token. Returns the steps made for each job and the jobs that
        ended, stopped ones included; raises the error of a job that failed (its rows have left)."""
        ended = self.drop_stopped()
        self.advance()
        steps, finished, failed = self.sample()
        for error in failed.values():
            raise error
        return steps, ended + finished

    def advance(self) -> None:
        """The forward pass for the tokens drawn last step: every row gets its next logits. Lazy (run at
        the start of the next step, not the end of the last), so a job stopped in between costs nothing."""
        if self.pending is None or not self.rows:
            return
        tokens, self.pending = self.pending, None
        self.logits = self.backend.forward(tokens, self._wants)  # (B, V) float32

    def _wants(self, b: int) -> torch.Tensor | None:
        """The ids row b needs the values of at the step after this forward pass (`wanted_ids`); None for a
        row that feeds a given token then. Only a backend that knows some tokens' values asks."""
        row = self.rows[b]
        if row.forced:
            return None
        try:
            mask = row.allowed(self.lm.vocab_size) if row.job.constrained else None
        except Exception:  # the draw meets it again, where a row's error ends only its job (`_contain`)
            return None
        return wanted_ids(row.job, mask)

    def sample(self) -> tuple[dict["Generation", list[Step]], list["Generation"], dict["Generation", Exception]]:
        """Draw a token for every row, record it, and let finished rows leave. Returns the steps made for
        each job, the jobs whose completions have all finished, and the jobs that failed with their errors
        (their rows have left; every other row drew what it draws alone)."""
        if not self.rows:
            return {}, [], {}
        B = len(self.rows)
        tokens = torch.empty(B, dtype=torch.long, device=self.lm.device)
        records: list[dict] = [{}] * B
        feeding = [b for b, row in enumerate(self.rows) if row.forced]
        for b in feeding:  # a replay's prefix: the token is given, nothing is drawn or recorded
            row = self.rows[b]
            if row.job.capture and row.index == 0 and not row.job.constrained:
                # Without a grammar these logits are all that step's sampler saw (a grammar's mask is
                # only known at the drawn step: the matcher has already followed the whole prefix).
                at = len(row.job.prefix_ids) - len(row.forced)
                row.job.snapshots[at] = Snapshot(self.logits[b].detach().float().cpu().clone(), None)
            tokens[b] = row.forced.pop(0)
        failed: dict["Generation", Exception] = {}
        for g in self._group_list(feeding):
            try:
                self._sample(g, tokens, records)
            except Exception as error:
                failed.update(self._contain(g, tokens, records, error))

        steps: dict["Generation", list[Step]] = defaultdict(list)
        keep, drawn = [], []
        for b, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            job, i = row.job, row.index
            if job in failed:
                continue
            if b in feeding:
                keep.append(b)
                continue
            last = row.position == len(job.prefix_ids) + job.max_tokens - 1
            try:
                text, delta, finish = row.state.feed(token, last)
                step = Step(index=i, position=row.position, text=text, delta=delta, finish_reason=finish, **records[b])
            except Exception as error:  # recording this row failed: its job ends, no other
                failed[job] = error
                continue
            drawn.append(b)
            job.completions[i].append(step)
            job.texts[i] += delta
            steps[job].append(step)
            row.position += 1
            if finish:
                job.finish_reasons[i] = finish
            else:
                keep.append(b)
        if failed:  # a job that failed on a later row leaves with every row
            keep = [b for b in keep if self.rows[b].job not in failed]
            drawn = [b for b in drawn if self.rows[b].job not in failed]
            for job in failed:
                steps.pop(job, None)
        # The prefix is already in seen and counts (join): only drawn tokens are new history.
        drawn_rows = torch.tensor(drawn, dtype=torch.long, device=self.lm.device)
        self.seen[drawn_rows, tokens[drawn_rows]] = True
        self.counts[drawn_rows, tokens[drawn_rows]] += 1
        self.logits = None
        self._keep(keep)
        if self.rows:
            self.pending = tokens[keep] if len(keep) < B else tokens
        return dict(steps), [job for job in steps if job.done], failed

    def _group_list(self, feeding: list[int]) -> list[_Group]:
        """The rows that draw this step, grouped by pipeline; cached while no row is feeding a prefix."""
        if self._groups is None or feeding or self._fed_last:
            by_key: dict[tuple, list[int]] = defaultdict(list)
            for b, row in enumerate(self.rows):
                if b not in feeding:
                    by_key[row.job.constrained, row.job.params.sampler_order].append(b)
            dev = self.lm.device
            self._groups = [
                _Group(constrained, members, None if len(members) == len(self.rows) else torch.tensor(members, device=dev),
                       [self.rows[b].job.params for b in members])
                for (constrained, _), members in by_key.items()
            ]
        self._fed_last = bool(feeding)
        return self._groups

    def _contain(self, g: _Group, tokens: torch.Tensor, records: list[dict], error: Exception) -> dict["Generation", Exception]:
        """Sampling group `g` raised `error`: sample each of its jobs on its own. A job that fails alone
        is a culprit (returned with its error); the others' tokens and records are what they draw alone,
        which is what they would have drawn in the group."""
        by_job: dict["Generation", list[int]] = defaultdict(list)
        for b in g.members:
            by_job[self.rows[b].job].append(b)
        if len(by_job) == 1:
            return {job: error for job in by_job}
        failed = {}
        for job, members in by_job.items():
            alone = _Group(g.constrained, members, torch.tensor(members, device=self.lm.device), [job.params] * len(members))
            try:
                self._sample(alone, tokens, records)
            except Exception as e:
                failed[job] = e
        if not failed:  # every job draws alone: only their sharing a pipeline failed (a bug in a stage)
            log.error("sampling %d jobs together failed where each alone did not", len(by_job), exc_info=error)
        return failed

    def _sample(self, g: _Group, tokens: torch.Tensor, records: list[dict]) -> None:
        """Draw and record the rows of group `g`. A row whose final logits cannot be drawn from raises
        NonFiniteLogits. On any error the rows' stage memory is as it was, so a retry starts clean."""
        def rows_of(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or g.index is None else t[g.index]

        rows = [self.rows[b] for b in g.members]
        memory = [r.state.memory for r in rows]
        saved = [dict(m) for m in memory]  # stateful stages write their memory in place (mirostat's mu)
        try:
            if g.knobs is None:
                g.knobs = RowKnobs.of(g.params, self.lm.vocab_size, self.lm.device)
            allowed = self._allowed(rows) if g.constrained else None
            order = rows[0].job.params.sampler_order
            coords = [(r.job.seed, r.job.first_index + r.index, r.position) for r in rows]
            ctx = SamplerContext(g.knobs, order, rows_of(self.seen), rows_of(self.counts), rows_of(self.bias), allowed,
                                 history=[r.state.history for r in rows], breakers=[r.job.dry_breakers for r in rows],
                                 memory=memory, coords=coords)
            stages = run_pipeline(rows_of(self.logits), ctx, g.constrained)
            _check_finite(stages, rows)
            for i, r in enumerate(rows):
                if r.job.capture and r.index == 0:
                    mask = None if allowed is None else allowed[i].cpu().clone()
                    r.job.snapshots[r.position] = Snapshot(stages[0][1][i].detach().float().cpu().clone(), mask)
            u = torch.tensor([uniform(*c) for c in coords], dtype=torch.float64)
            chosen, landing = draw(stages[-1][1], u, g.knobs.greedy)
            # Where the backend knows only some tokens' values (a server's top K), a draw that landed in the
            # rest is drawn again within the known ones, and each stage says whether it was exact.
            redrawn = self.backend.redraw(stages[-1][1], chosen, u, g.knobs.greedy, g.members)
            approximate = self.backend.approximate(stages, g.members)
            learn(stages, ctx, chosen)
            notes = [{name: v for name, values in ctx.notes.items() if (v := float(values[i])) == v} for i in range(len(rows))]
            made = record(stages, chosen, landing, [p.record_k for p in g.params])
            for rec, approx, again in zip(made, approximate, redrawn):
                if approx or again:
                    rec.update(approximate=approx, rest_redrawn=again)
        except Exception:
            for m, before in zip(memory, saved):
                m.clear()
                m.update(before)
            raise
        if g.index is None:
            tokens.copy_(chosen)
        else:
            tokens[g.index] = chosen
        for b, rec, note in zip(g.members, made, notes):
            records[b] = {**rec, "notes": note}

    def _allowed(self, rows: list[Row]) -> torch.Tensor | None:
        V = self.lm.vocab_size
        masks = [row.allowed(V) for row in rows]
        if all(m is None for m in masks):
            return None
        full = torch.ones(V, dtype=torch.bool)
        return torch.stack([full if m is None else m for m in masks]).to(self.lm.device)


def _check_finite(stages: list[tuple[str, torch.Tensor]], rows: list[Row]) -> None:
    """Raise NonFiniteLogits, naming the row and the stage that made it so, when a row's final logits hold
    NaN or +inf or no finite value: the draw needs finite weights. One reduction per step: a row's max is
    NaN if any logit is NaN, +inf if any is +inf, and -inf when every token is removed."""
    top = stages[-1][1].amax(dim=-1)  # (b,)
    if bool(torch.isfinite(top).all()):
        return
    i = int((~torch.isfinite(top)).nonzero()[0, 0])
    for name, logits in stages:
        if not bool(torch.isfinite(logits[i].amax())):
            break
    row, bad = rows[i], logits[i]
    what = ("NaN" if bool(bad.isnan().any()) else "+inf" if bool((bad == float("inf")).any())
            else "-inf for every token (nothing is left to draw)")
    if name == "raw":
        where = "the model returned logits that are"
    else:
        stage = STAGES.get(name)
        knobs = ", ".join(k.name for k in stage.knobs) if stage is not None else ""
        where = f"after the {name} stage{f' ({knobs})' if knobs else ''} the logits were"
    raise NonFiniteLogits(f"completion {row.index} at position {row.position}: {where} {what}, so no token can be drawn; "
                          "this request ended, and no other request was affected.")


def _pad_left(cache, n: int) -> None:
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, n, 0))  # (B, H, T, D): n zero columns before T
        layer.values = F.pad(layer.values, (0, 0, n, 0))


def _trim_left(cache, n: int) -> None:
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, n:]
        layer.values = layer.values[:, :, n:]


_CACHE_KW: dict[int, str] = {}


def forward(model, input_ids, cache, **kw):
    # transformers 5 renames past_key_values= to cache=; speak whichever this version takes.
    key = _CACHE_KW.get(id(type(model)))
    if key is None:
        names = inspect.signature(model.forward).parameters
        key = "cache" if "cache" in names else "past_key_values"
        _CACHE_KW[id(type(model))] = key
    return model(input_ids=input_ids, use_cache=True, **{key: cache}, **kw)


def cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
