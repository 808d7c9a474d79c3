"""A CLIP (ViT-L/14) tokenizer folder without the model hub.

Prefers a real tokenizer in the host's Hugging Face cache; otherwise derives vocab.json + merges.txt
from the carried BPE merge list exactly the way CLIP's own tokenizer builds its vocabulary.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
from pathlib import Path

from ..platform.fsutil import atomic_write_bytes, atomic_write_json

BPE_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # CLIP's vocabulary size minus byte tokens minus the two specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CACHE_REPO = "models--openai--clip-vit-large-patch14"

TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,  # without it padding="max_length" overflows
    "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
    "do_lower_case": True, "errors": "replace", "add_prefix_space": False,
    "clean_up_tokenization_spaces": True,
}
SPECIAL_TOKENS = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in byte order of the vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in codes:
            codes[b] = 256 + extra
            extra += 1
    # CLIP orders the base vocabulary as printable bytes first, then the remapped ones.
    order = printable + [b for b in range(256) if b not in printable]
    return [chr(codes[b]) for b in order]


@functools.lru_cache(maxsize=1)
def _built_files() -> tuple[bytes, bytes]:
    with gzip.open(BPE_FILE, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1:MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n"
    return json.dumps(vocab, ensure_ascii=False).encode("utf-8"), merges_text.encode("utf-8")


def cached_tokenizer_dir() -> Path | None:
    """A snapshot of openai/clip-vit-large-patch14 with vocab.json and merges.txt in the host cache."""
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]) / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    for root in roots:
        for snapshot in sorted((root / CACHE_REPO / "snapshots").glob("*")):
            if (snapshot / "vocab.json").is_file() and (snapshot / "merges.txt").is_file():
                return snapshot
    return None


def write_clip_tokenizer(folder, use_cache: bool = True, pad_token: str = EOS) -> Path:
    """Write a CLIPTokenizer folder (loadable with CLIPTokenizer.from_pretrained on transformers 4.x and 5.x).

    `pad_token`: SD1.x pads with the end token; SD2.x (OpenCLIP, as in the WebUI and diffusers) with "!" (id 0).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cached = cached_tokenizer_dir() if use_cache else None
    if cached is not None:
        for name in ("vocab.json", "merges.txt"):
            # resolve(): the hub cache stores blobs behind symlinks
            atomic_write_bytes(folder / name, (cached / name).resolve().read_bytes())
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (cached / name).is_file():
                shutil.copyfile((cached / name).resolve(), folder / f".{name}.tmp")
                os.replace(folder / f".{name}.tmp", folder / name)
    else:
        vocab, merges = _built_files()
        atomic_write_bytes(folder / "vocab.json", vocab)
        atomic_write_bytes(folder / "merges.txt", merges)
    # our own config either way: model_max_length and special tokens must be right for both stacks
    atomic_write_json(folder / "tokenizer_config.json", dict(TOKENIZER_CONFIG, pad_token=pad_token))
    atomic_write_json(folder / "special_tokens_map.json", dict(SPECIAL_TOKENS, pad_token=pad_token))
    return folder
