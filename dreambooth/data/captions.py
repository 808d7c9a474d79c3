"""Captions: the prompt for each image, with [filewords] taken from a .txt sidecar or the file name."""
from __future__ import annotations

import re
from pathlib import Path

FILEWORDS = "[filewords]"
# "001_", "12-", "(3)", "img_0042" style numbering that carries no meaning
_NUMBERING = re.compile(r"^\d+[\s._-]*|\s*\(\d+\)$|[\s._-]*\d+$")


def filewords(image: Path) -> str:
    """The caption stored beside an image (`name.txt`), else its file name without numbering."""
    sidecar = image.with_suffix(".txt")
    if sidecar.is_file():
        return " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
    stem = image.stem
    for _ in range(2):
        stem = _NUMBERING.sub("", stem)
    return " ".join(stem.replace("_", " ").split())


def build_caption(template: str, image: Path, instance_token: str = "", class_token: str = "") -> str:
    """Fill `[filewords]` in the prompt template; an empty template means the file words alone."""
    template = template or FILEWORDS
    if FILEWORDS not in template:
        return template.strip()
    words = filewords(image)
    if instance_token and class_token and class_token in words and instance_token not in words:
        # "a photo of a person" -> "a photo of a ohwx person": the subject gets its token
        words = re.sub(rf"\b{re.escape(class_token)}\b", f"{instance_token} {class_token}", words, count=1)
    caption = template.replace(FILEWORDS, words)
    return " ".join(caption.replace(" ,", ",").split())
