"""Where the default model comes from, and which device and dtype a model gets."""

import pytest
import torch

from engine import model as M


class Refused(Exception):
    pass


def test_without_the_embedded_wheel_the_default_model_falls_back_to_its_hub_copy(monkeypatch):
    asked = []

    def from_pretrained(name, **kwargs):
        asked.append((name, kwargs))
        raise Refused

    import transformers

    monkeypatch.setattr(M, "embedded_gguf", lambda: None)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(Refused):
        M.load_model()
    assert asked == [("HuggingFaceTB/SmolLM2-135M-Instruct", {})]


def test_the_embedded_default_never_asks_the_network(monkeypatch, tmp_path):
    asked = []

    def from_pretrained(name, **kwargs):
        asked.append(kwargs)
        raise Refused

    import transformers

    monkeypatch.setattr(M, "_embedded_folder", lambda gguf, say: tmp_path)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(Refused):
        M.load_model()
    assert asked == [{"local_files_only": True}]


def test_cuda_gets_bf16_where_supported_else_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert M.pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert M.pick_dtype(torch.device("cuda")) == torch.float16


def test_cpu_gets_bf16_only_where_it_runs_natively(monkeypatch):
    monkeypatch.setattr(M, "cpu_has_fast_bf16", lambda: True)
    assert M.pick_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(M, "cpu_has_fast_bf16", lambda: False)
    assert M.pick_dtype(torch.device("cpu")) == torch.float32


def test_an_explicit_dtype_wins_and_a_wrong_one_is_named():
    assert M.pick_dtype(torch.device("cpu"), "float32") == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        M.pick_dtype(torch.device("cpu"), "float8")


def test_cuda_is_preferred_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert M.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert M.pick_device("cpu").type == "cpu"
