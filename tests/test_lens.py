"""The logit lens on tiny random-weight models built locally (no download), checked by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)

from engine.lens import LensUnsupported, lens_parts, logit_lens

SIZE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
PROMPT = [3, 17, 5, 42, 8, 9, 11, 60, 1, 2, 33]


def tiny(config_class, **extra):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**SIZE, **extra), dtype=torch.float32).eval()


@pytest.mark.parametrize("config_class", [LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config])
def test_the_last_layer_of_the_lens_is_the_models_own_next_token_distribution(config_class):
    model = tiny(config_class)
    out = logit_lens(model, PROMPT, token=7)
    with torch.no_grad():
        real = torch.softmax(model(torch.tensor([PROMPT])).logits[0].float(), dim=-1)  # (T, V)
    top_probs, top_ids = real[-8:].topk(5, dim=-1)
    assert out.top_ids.shape == (SIZE["num_hidden_layers"] + 1, 8, 5)
    assert torch.equal(out.top_ids[-1], top_ids)
    torch.testing.assert_close(out.top_probs[-1], top_probs)
    torch.testing.assert_close(out.token_prob[-1], real[-1, 7])


def test_each_layer_is_the_final_norm_and_head_applied_to_that_layers_output():
    model = tiny(LlamaConfig)
    out = logit_lens(model, PROMPT, token=7)
    with torch.no_grad():  # by hand: the embeddings, then each layer's output, read through norm and head
        ids = torch.tensor([PROMPT])
        hidden = model.model.embed_tokens(ids)
        position_ids = torch.arange(len(PROMPT))[None]
        rotary = model.model.rotary_emb(hidden, position_ids)
        mask = torch.full((len(PROMPT), len(PROMPT)), float("-inf")).triu(1)[None, None]
        manual = [hidden]
        for layer in model.model.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            manual.append(hidden)
        probs = torch.softmax(model.lm_head(model.model.norm(torch.cat(manual)[:, -8:])), dim=-1)  # (L+1, 8, V)
    top_probs, top_ids = probs.topk(5, dim=-1)
    assert torch.equal(out.top_ids, top_ids)
    torch.testing.assert_close(out.top_probs, top_probs)
    last = probs[:, -1]  # (L+1, V)
    assert out.token_rank.tolist() == [int((row > row[7]).sum()) + 1 for row in last]


def test_the_chosen_tokens_rank_is_one_where_it_is_the_layers_top_token():
    model = tiny(Qwen2Config)
    top = int(logit_lens(model, PROMPT).top_ids[2, -1, 0])
    out = logit_lens(model, PROMPT, token=top)
    assert out.token_rank[2] == 1
    assert out.token_prob[2] == out.top_probs[2, -1, 0]


def test_a_prefix_shorter_than_eight_tokens_gives_one_column_per_token():
    out = logit_lens(tiny(MistralConfig), PROMPT[:3])
    assert out.top_ids.shape[1] == 3
    assert out.token_rank is None


@pytest.mark.parametrize("config", [
    GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4),
    Gemma2Config(**SIZE, head_dim=8, final_logit_softcapping=30.0),
], ids=["gpt2", "gemma2-softcapped"])
def test_other_architectures_are_refused_with_a_message_that_names_them(config):
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(LensUnsupported, match=type(model).__name__):
        lens_parts(model)
