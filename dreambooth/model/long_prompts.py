"""Captions longer than CLIP's 75 tokens, encoded the way the WebUI encodes long prompts.

A caption's tokens (at most `max_tokens`: 75, 150, 225 or 300) are cut into chunks of 75; each chunk
becomes its own 77-token window `BOS + chunk + EOS + padding` and is encoded separately, and the
windows' outputs are joined along the sequence. A caption that needs fewer chunks than the limit gets
empty windows (`BOS EOS padding`), which is what the WebUI adds when it pads a batch of prompts to its
longest one.

Every caption is tokenized at the full length. Since each window is encoded on its own and CLIP's text
attention is causal, cutting the token ids (or their encodings) after any position gives exactly the
encoding of the shorter sequence: `pad_tokens` off therefore trims a batch to its longest caption
(`used`: the positions up to and including a caption's last EOS) instead of padding it to the full length.

`strict_tokens`: each part of a caption separated by `, ; . ! ?` is wrapped in its own BOS … EOS (the
older extension's strict tokens), so tags do not run into each other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK = 75  # caption tokens per window; each window holds BOS + 75 + EOS = 77 positions
WINDOW = CHUNK + 2
_STRICT_SPLIT = re.compile(r"[,;.!?]\s")


@dataclass(frozen=True)
class PromptLayout:
    tokenizer: object
    max_tokens: int = CHUNK   # max_token_length
    pad_tokens: bool = True
    strict: bool = False      # strict_tokens

    @property
    def paired(self) -> bool:
        """SDXL's two tokenizers (convert.sdxl_io.PairTokenizer): one 77-token window, one row per tokenizer;
        long prompts and strict tokens are for SD 1.x/2.x."""
        return hasattr(self.tokenizer, "tokenizer_2")

    @property
    def length(self) -> int:
        return WINDOW if self.paired else self.max_tokens // CHUNK * WINDOW

    def content(self, caption: str) -> list[int]:
        """The caption's token ids between the outer BOS and EOS (untruncated)."""
        tok = self.tokenizer.tokenizer if self.paired else self.tokenizer  # SDXL: CLIP-L's count the length
        if not self.strict:
            return tok(caption, add_special_tokens=False).input_ids
        parts = [part.strip() for part in _STRICT_SPLIT.split(caption) if part.strip()]
        comma = tok(",", add_special_tokens=False).input_ids
        ids: list[int] = []
        for n, part in enumerate(parts):
            ids += ([tok.eos_token_id] + comma + [tok.bos_token_id] if n else []) + \
                tok(part, add_special_tokens=False).input_ids
        return ids

    def windows(self, caption: str) -> tuple[list[int], int]:
        """(ids of the full length, positions used up to the last EOS) for one caption."""
        tok = self.tokenizer
        tokens = self.content(caption)[:self.max_tokens]
        ids: list[int] = []
        used = 0
        for start in range(0, self.max_tokens, CHUNK):
            chunk = tokens[start:start + CHUNK]
            if chunk or start == 0:
                used = len(ids) + len(chunk) + 2
            ids += [tok.bos_token_id] + chunk + [tok.eos_token_id] + [tok.pad_token_id] * (CHUNK - len(chunk))
        return ids, used

    def tokenize(self, captions: list[str]):
        """(LongTensor (N, length), positions used per caption)."""
        import torch

        if self.paired:  # (N, 2, 77)
            ids = self.tokenizer(captions, padding="max_length", max_length=WINDOW, truncation=True,
                                 return_tensors="pt").input_ids
            return ids, [WINDOW] * len(captions)
        rows = [self.windows(caption) for caption in captions]
        return torch.tensor([ids for ids, _ in rows], dtype=torch.long), [used for _, used in rows]

    def trim(self, tensor, used: list[int]):
        """Token ids or encodings (N, length, …) cut after the batch's longest caption when pad_tokens is off."""
        return tensor if self.pad_tokens or self.paired else tensor[:, :max(used)]

    def too_long(self, caption: str) -> int:
        """How many tokens the caption has when that is over the limit, else 0."""
        count = len(self.content(caption))
        return count if count > (CHUNK if self.paired else self.max_tokens) else 0


def prompt_layout(tokenizer, cfg) -> PromptLayout:
    """The layout a TrainConfig asks for (max_token_length, pad_tokens, strict_tokens)."""
    return PromptLayout(tokenizer, cfg.max_token_length, cfg.pad_tokens, cfg.strict_tokens)
