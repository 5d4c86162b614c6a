"""Generator mechanics on a fake model: seeds, stops, characters, context length, cancellation, records."""

import pickle

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from engine.generator import Generation
from engine.knobs import STAGE_ORDER, ParamError, SamplingParams
from tests.fakes import EOS, fake_lm, fixed, script

PROMPT = [1]
LETTERS = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdefgh"]  # ids 2..9 = a..h


def run(lm, prefix_ids=(), cancel=None, **knobs):
    gen = Generation(lm, PROMPT, SamplingParams.build(**knobs), cancel=cancel, prefix_ids=list(prefix_ids))
    steps = [s for batch in gen for s in batch]
    return gen, steps


def tokens(gen, i=0):
    return [s.token_id for s in gen.completions[i]]


def spread():
    # Ten tokens, none of them EOS-likely, so completions run to max_tokens.
    return fixed([1e-9, 0.02, 0.2, 0.15, 0.13, 0.12, 0.11, 0.1, 0.09, 0.08])


# --- seeds ----------------------------------------------------------------------------------


def test_same_seed_same_settings_give_the_same_tokens():
    lm = fake_lm(spread(), LETTERS)
    a, _ = run(lm, seed=7, max_tokens=30)
    b, _ = run(lm, seed=7, max_tokens=30)
    assert tokens(a) == tokens(b)


def test_same_seed_gives_the_same_n_completions_each_one_distinct():
    lm = fake_lm(spread(), LETTERS)
    a, _ = run(lm, seed=11, n=4, max_tokens=30)
    b, _ = run(lm, seed=11, n=4, max_tokens=30)
    assert [tokens(a, i) for i in range(4)] == [tokens(b, i) for i in range(4)]
    assert len({tuple(tokens(a, i)) for i in range(4)}) == 4


def test_different_seeds_give_different_tokens():
    lm = fake_lm(spread(), LETTERS)
    assert tokens(run(lm, seed=1, max_tokens=30)[0]) != tokens(run(lm, seed=2, max_tokens=30)[0])


def test_a_missing_seed_is_chosen_and_reported_so_the_answer_can_be_reproduced():
    lm = fake_lm(spread(), LETTERS)
    a, _ = run(lm, max_tokens=20)
    b, _ = run(lm, seed=a.seed, max_tokens=20)
    assert tokens(a) == tokens(b)


def history_model(vocab=10):
    # Logits that depend on the whole history, so greedy paths are not trivial.
    def next_logits(history):
        g = torch.Generator().manual_seed(sum((i + 1) * t for i, t in enumerate(history)) % 100003)
        out = torch.randn(vocab, generator=g) * 3
        out[EOS] = -10.0
        return out

    return next_logits


def test_greedy_equals_top_k_one_equals_min_p_one():
    lm = fake_lm(history_model(), LETTERS)
    greedy = tokens(run(lm, temperature=0, max_tokens=25)[0])
    assert tokens(run(lm, top_k=1, seed=3, max_tokens=25)[0]) == greedy
    assert tokens(run(lm, min_p=1.0, seed=4, max_tokens=25)[0]) == greedy


# --- the record matches what was sampled ----------------------------------------------------


@pytest.mark.parametrize("extra_tokens", [0, 70], ids=["most-survive", "few-survive"])
def test_sampled_frequencies_follow_the_final_distribution_the_record_reports(extra_tokens):
    # Few survivors out of a larger vocabulary take the draw's sorted path, many its vocabulary path.
    probs = [1e-9, 0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05, 1e-9, 1e-9] + [1e-12] * extra_tokens
    lm = fake_lm(fixed(probs), LETTERS + [b"z"] * extra_tokens)
    knobs = dict(temperature=0.7, top_k=6, top_p=0.95, max_tokens=1, n=128)
    counts = np.zeros(len(probs))
    final = None
    for seed in range(24):
        gen, steps = run(lm, seed=seed, **knobs)
        for s in steps:
            counts[s.token_id] += 1
            p = dict(zip(s.cand_ids.tolist(), s.stage_probs[-1].tolist()))
            final = p if final is None else final
            assert p == pytest.approx(final)  # every step reports the same final distribution
    support = [t for t, p in final.items() if p > 0]
    assert set(np.nonzero(counts)[0]) <= set(support)
    expected = np.array([final[t] for t in support], dtype=np.float64)
    expected = expected / expected.sum() * counts.sum()
    assert chisquare(counts[support], expected).pvalue > 1e-3


def test_greedy_steps_report_probability_one_and_no_draw():
    lm = fake_lm(spread(), LETTERS)
    _, steps = run(lm, temperature=0, max_tokens=3)
    assert all(s.logprob == 0.0 and s.draw is None for s in steps)
    assert all(s.raw_logprob < 0 for s in steps)


def test_each_step_records_every_stage_with_removed_mass_that_adds_up():
    lm = fake_lm(fixed([1e-9, 0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05, 1e-9, 1e-9]), LETTERS)
    gen, steps = run(lm, seed=0, top_k=4, min_p=0.6, max_tokens=2)
    s = steps[0]
    assert gen.stages == ("raw", *STAGE_ORDER)
    assert s.stage_probs.shape == (len(gen.stages), len(s.cand_ids))
    assert s.stage_kept[gen.stages.index("top_k")] == 4
    assert s.stage_removed[gen.stages.index("top_k")] == pytest.approx(0.1 + 0.08 + 0.05, abs=1e-5)
    assert s.stage_kept[-1] == 2  # min-p 0.6 x 0.3: keeps 0.3 and 0.2, not 0.15
    assert s.stage_probs[-1].sum() == pytest.approx(1.0, abs=1e-5)
    assert s.stage_removed[gen.stages.index("temperature")] == 0.0  # off


def test_penalties_see_what_was_generated():
    lm = fake_lm(fixed([1e-9, 1e-9, 0.5, 0.5] + [1e-9] * 6), LETTERS)
    gen, steps = run(lm, seed=0, temperature=0, frequency_penalty=2.0, max_tokens=6)
    # Each pick makes the other token the better one: a strict alternation.
    t = tokens(gen)
    assert all(a != b for a, b in zip(t, t[1:]))


# --- stops, text and characters -------------------------------------------------------------


WORDS = [b"<eos>", b"<p>", b"Hel", b"lo", b" wor", b"ld", b"!", b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98\x80"]


def test_stop_sequence_split_over_tokens_ends_the_text_and_is_included():
    lm = fake_lm(script([2, 3, 4, 5, 6], len(WORDS)), WORDS)
    gen, steps = run(lm, temperature=0, stop=["o wo"])
    assert gen.texts[0] == "Hello wo"
    assert gen.finish_reasons[0] == "stop"
    assert len(steps) == 3


def test_stream_holds_back_only_what_could_become_a_stop_sequence():
    lm = fake_lm(script([2, 3, 4, 5, 6], len(WORDS)), WORDS)
    _, steps = run(lm, temperature=0, stop=["o wo"])
    assert [s.delta for s in steps] == ["Hel", "l", "o wo"]  # "o" waits: it may start "o wo"


def test_without_a_match_the_held_text_is_released_at_the_end():
    lm = fake_lm(script([2, 3, 4, 5, 6], len(WORDS)), WORDS)
    gen, steps = run(lm, temperature=0, stop=["lo!"])
    assert "".join(s.delta for s in steps) == gen.texts[0] == "Hello world!"
    assert gen.finish_reasons[0] == "stop"  # ended by EOS
    assert steps[-1].token_id == EOS and steps[-1].text == ""


def test_the_earliest_of_several_stop_sequences_wins():
    lm = fake_lm(script([2, 3, 4, 5, 6], len(WORDS)), WORDS)
    gen, _ = run(lm, temperature=0, stop=["world", "lo w"])
    assert gen.texts[0] == "Hello w"


def test_multibyte_characters_split_over_tokens_are_never_emitted_broken():
    lm = fake_lm(script([2, 7, 8, 9, 10, 6], len(WORDS)), WORDS)
    gen, steps = run(lm, temperature=0)
    assert gen.texts[0] == "Helé😀!"
    assert [s.text for s in steps[:-1]] == ["Hel", "", "é", "", "😀", "!"]
    assert not any("\ufffd" in s.delta for s in steps)


def test_max_tokens_ends_with_length():
    lm = fake_lm(spread(), LETTERS)
    gen, steps = run(lm, seed=0, max_tokens=5)
    assert len(steps) == 5 and gen.finish_reasons == ["length"] and steps[-1].finish_reason == "length"


# --- context length ---------------------------------------------------------------------------


def test_without_max_tokens_generation_fills_the_context():
    lm = fake_lm(spread(), LETTERS, context_length=8)
    gen, steps = run(lm, seed=0)
    assert len(steps) == 7 and gen.finish_reasons == ["length"]


def test_truncate_shrinks_max_tokens_to_fit_the_context():
    lm = fake_lm(spread(), LETTERS, context_length=8)
    gen, steps = run(lm, seed=0, max_tokens=100)
    assert gen.max_tokens == 7 and len(steps) == 7


def test_error_behaviour_refuses_max_tokens_past_the_context():
    lm = fake_lm(spread(), LETTERS, context_length=8)
    with pytest.raises(ParamError) as e:
        run(lm, max_tokens=100, context_length_exceeded_behavior="error")
    assert e.value.param == "max_tokens" and "[1, 7]" in e.value.message


def test_a_prompt_that_fills_the_context_alone_is_a_clear_error():
    lm = fake_lm(spread(), LETTERS, context_length=8)
    with pytest.raises(ParamError) as e:
        Generation(lm, [1] * 8, SamplingParams.build())
    assert e.value.param == "messages" and e.value.code == "context_length_exceeded"


def test_logit_bias_for_a_token_outside_the_vocabulary_names_the_id():
    lm = fake_lm(spread(), LETTERS)
    with pytest.raises(ParamError) as e:
        run(lm, logit_bias={"999": 5})
    assert e.value.param == "logit_bias" and "999" in e.value.message


def test_logit_bias_minus_100_bans_a_token():
    lm = fake_lm(fixed([1e-9, 1e-9, 0.9, 0.1] + [1e-9] * 6), LETTERS)
    gen, _ = run(lm, temperature=0, logit_bias={"2": -100}, max_tokens=5)
    assert 2 not in tokens(gen)


# --- batching and cancellation -----------------------------------------------------------------


def test_finished_completions_leave_the_batch():
    lm = fake_lm(fixed([0.3] + [0.07] * 9), LETTERS)
    gen, _ = run(lm, seed=5, n=6, max_tokens=40)
    lengths = [len(c) for c in gen.completions]
    assert len(set(lengths)) > 1
    rows = lm.model.rows_seen[1:]  # after the one-row prefill
    assert rows == sorted(rows, reverse=True) and rows[-1] < 6
    for c in gen.completions:
        assert [s.position for s in c] == list(range(len(c)))


def test_cancel_stops_within_one_step():
    lm = fake_lm(spread(), LETTERS)
    received = []
    gen = Generation(lm, PROMPT, SamplingParams.build(seed=0, n=2, max_tokens=50), cancel=lambda: len(received) >= 3)
    for batch in gen:
        received.append(batch)
    assert len(received) == 3
    assert gen.finish_reasons == ["cancelled", "cancelled"]
    assert lm.model.forward_calls == 3  # prefill + two steps; the cancelled step never ran the model


def test_prefix_tokens_continue_the_completion_and_count_as_generated():
    lm = fake_lm(fixed([1e-9, 1e-9, 0.5, 0.5] + [1e-9] * 6), LETTERS)
    gen, steps = run(lm, prefix_ids=[2, 2], temperature=0, frequency_penalty=1.0, max_tokens=1)
    assert steps[0].position == 2
    assert steps[0].token_id == 3  # token 2 already appeared twice, so the penalty flips the choice
    assert gen.texts[0] == "b"


# --- memory of the record ---------------------------------------------------------------------


def test_a_512_token_trace_stays_small_whatever_the_vocabulary():
    V = 49152
    logits = torch.randn(V, generator=torch.Generator().manual_seed(0))
    logits[EOS] = -50
    lm = fake_lm(lambda h: logits, [b"<eos>"] + [b"x"] * (V - 1), context_length=1024)
    gen, steps = run(lm, seed=0, temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, presence_penalty=0.5,
                     repetition_penalty=1.2, logit_bias={"5": 3}, max_tokens=512)
    assert len(steps) == 512
    assert len(pickle.dumps(gen.completions)) < 5 * 2**20


# --- the seed contract ------------------------------------------------------------------------


def test_completion_i_is_the_same_whatever_n_is():
    lm = fake_lm(history_model(), LETTERS)
    knobs = dict(seed=21, temperature=1.2, top_p=0.9, max_tokens=12)
    by_n = {n: run(lm, n=n, **knobs)[0] for n in (1, 2, 5)}
    for i in range(5):
        same = [tokens(gen, i) for n, gen in by_n.items() if i < n]
        assert all(t == same[0] for t in same), f"completion {i}"


def test_a_generation_can_continue_another_completions_random_numbers():
    lm = fake_lm(history_model(), LETTERS)
    knobs = dict(seed=4, temperature=1.1, max_tokens=10)
    third = tokens(run(lm, n=3, **knobs)[0], 2)
    gen = Generation(lm, PROMPT, SamplingParams.build(**knobs), first_index=2)
    for _ in gen:
        pass
    assert tokens(gen) == third


# --- nothing generated is lost when a completion ends early -------------------------------------


def stopped_after(lm, steps_wanted, **knobs):
    received = []
    gen = Generation(lm, PROMPT, SamplingParams.build(**knobs), cancel=lambda: len(received) >= steps_wanted)
    for batch in gen:
        received.extend(batch)
    return gen, received


def test_cancel_after_a_partial_stop_match_keeps_the_held_text():
    lm = fake_lm(script([2, 3, 4], len(WORDS)), WORDS)
    gen, steps = stopped_after(lm, 2, temperature=0, stop=["lo!"])  # "lo" may begin "lo!": held back
    assert "".join(s.delta for s in steps) == "Hel"
    assert gen.texts[0] == "Hello" and gen.finish_reasons == ["cancelled"]


def test_cancel_after_half_a_character_keeps_its_bytes_as_a_replacement_mark():
    lm = fake_lm(script([2, 7, 8], len(WORDS)), WORDS)
    gen, _ = stopped_after(lm, 2, temperature=0)  # "Hel" then the first byte of "é"
    assert gen.texts[0] == "Hel\ufffd" and gen.finish_reasons == ["cancelled"]


def test_length_after_half_a_character_keeps_its_bytes():
    lm = fake_lm(script([2, 7, 8], len(WORDS)), WORDS)
    gen, steps = run(lm, temperature=0, max_tokens=2)
    assert gen.texts[0] == "".join(s.delta for s in steps) == "Hel\ufffd"
