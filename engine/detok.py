"""Incremental detokenisation: turn one token at a time into text without breaking characters.

The prefix/read-offset scheme of Hugging Face TGI and vLLM: decode a short window of recent tokens
twice (with and without the newest ones) and emit the difference, holding it back while it ends in
U+FFFD, the mark of a multi-byte character whose remaining bytes are still to come.
"""

from __future__ import annotations


class IncrementalDecoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # end of what has already been emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Everything pushed but not yet returned (an unfinished character decodes as U+FFFD): the
        completion ends here, so nothing may stay behind."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
