"""A remote model's vocabulary read from its server's /detokenize, for a server whose tokenizer is not here.

Stop matching, incremental text, DRY's breakers and logit_bias by text need every token's string. Without
a local tokenizer (`--remote-tokenizer`), `read_vocabulary` asks the server for each id's text once (vLLM's
`/detokenize {"tokens": [...]}` -> `{"prompt": text}`; this playground's own has it), on a small thread
pool, and caches the table under engine.model.cache_root() keyed by server URL, model and vocabulary size,
so a restart costs nothing.

Each id is read after a fixed anchor token (`[anchor, id]`, the anchor's own text cut off) because a
sentencepiece tokenizer drops a lone token's leading space. A token that is part of a UTF-8 character comes
back as U+FFFD: its bytes are unknown, so it is marked inexact, and the features that need every token's
exact bytes (grammars: llguidance builds its automaton from them) are refused for that model.

`VocabTokenizer` is the small part of a Hugging Face tokenizer the engine uses: decode from the table
(from the server when a sequence holds an inexact token, whose bytes only it knows), encode through the
server's `/tokenize`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from engine.model import cache_root

THREADS = 8
# Turn ends seen in common vocabularies: end-of-sequence candidates where the chat template names none.
END_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<eos>", "<|end|>", "<end_of_turn>")


def cache_file(url: str, model: str, V: int) -> str:
    key = hashlib.sha256(f"{url.rstrip('/')}\n{model}\n{V}".encode()).hexdigest()[:24]
    return str(cache_root() / "remote-vocab" / f"{key}.json")


def read_vocabulary(server: Any, model: str, V: int, say: Callable[[str], None] | None = None) -> list[str | None]:
    """Every id's text, None where it is not exact bytes (U+FFFD, or the server would not decode it); from
    the cache when this server, model and size were read before."""
    path = cache_file(server.url, model, V)
    try:
        with open(path) as f:
            texts = json.load(f)
        if len(texts) == V:
            return texts
    except (OSError, ValueError):
        pass
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    anchor = _anchor(server, model)
    cut = _detok(server, model, [anchor])
    if cut is None:
        raise ValueError("the server would not detokenize its own token")
    say(f"reading the vocabulary of {model} from {server.url}/detokenize: {V} tokens, once (cached in {path})")

    def one(i: int) -> str | None:
        text = _detok(server, model, [anchor, i])
        if text is None or not text.startswith(cut) or "\ufffd" in text[len(cut):]:
            return None
        return text[len(cut):]

    texts: list[str | None] = []
    step = max(V // 10, 1)
    with ThreadPoolExecutor(THREADS) as pool:
        for i, text in enumerate(pool.map(one, range(V))):
            texts.append(text)
            if (i + 1) % step == 0 and i + 1 < V:
                say(f"  {i + 1}/{V} tokens")
    say(f"  {V}/{V} tokens; {sum(t is None for t in texts)} are part of a character (inexact)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(texts, f)
    os.replace(tmp, path)  # never a half-written table under the real name
    return texts


def _anchor(server: Any, model: str) -> int:
    # A plain ASCII letter's token: its text is stable whatever follows it.
    status, data = server.call("POST", "/tokenize", {"model": model, "prompt": "a", "add_special_tokens": False})
    tokens = data.get("tokens") if status == 200 and isinstance(data, dict) else None
    if not tokens:
        raise ValueError("the server has no /tokenize for text")
    return int(tokens[-1])


def _detok(server: Any, model: str, ids: list[int]) -> str | None:
    status, data = server.call("POST", "/detokenize", {"model": model, "tokens": ids})
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        return None
    return data["prompt"]


class VocabTokenizer:
    """The tokenizer calls the engine makes, over a detokenised vocabulary and the server's /tokenize."""

    chat_template = ""  # the template lives on the server (RemoteModel.encode_chat)

    def __init__(self, server: Any, model: str, texts: list[str | None], eos_token_id: int | None):
        self.server, self.model, self.texts = server, model, texts
        self.eos_token_id = eos_token_id
        self.inexact = sum(t is None for t in texts)

    def __len__(self) -> int:
        return len(self.texts)

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and i == self.eos_token_id)]
        if all(0 <= i < len(self.texts) and self.texts[i] is not None for i in ids):
            return "".join(self.texts[i] for i in ids)
        # A byte of a character: only the server knows which, so it decodes the whole sequence.
        text = _detok(self.server, self.model, ids)
        return text if text is not None else "".join(self.texts[i] or "\ufffd" for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        data = self.server.get("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens})
        return [int(t) for t in data["tokens"]]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.texts[ids] if self.texts[ids] is not None else "\ufffd"
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def apply_chat_template(self, *args, **kwargs):
        raise ValueError("this remote model's chat template is on its server, which offers no /tokenize with messages")


def find_eos(server: Any, model: str, texts: list[str | None]) -> int | None:
    """The token that ends an assistant's turn in the server's chat template (the one after its content), else
    a well-known end token found in the vocabulary."""
    status, data = server.call("POST", "/tokenize", {"model": model, "add_generation_prompt": False, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "zq"}]})
    if status == 200 and isinstance(data, dict) and isinstance(data.get("tokens"), list):
        ids = [int(t) for t in data["tokens"]]
        for k in range(len(ids) - 1, 0, -1):  # after the content's last token: skip it and any newline
            if (texts[ids[k - 1]] or "").endswith("q") and k < len(ids):
                return ids[k]
    for name in END_TEXTS:
        if name in texts:
            return texts.index(name)
    return None
