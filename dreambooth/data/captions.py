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


def strip_token(words: str, token: str) -> str:
    """`words` without the instance token (class images show the class, not the subject)."""
    if not token:
        return words
    return " ".join(re.sub(rf"\b{re.escape(token)}\b", " ", words).replace(" ,", ",").split()).strip(" ,")


def class_words(class_prompt: str, instance_image: Path, instance_token: str = "") -> str:
    """What a generated class image's `.txt` holds: the words that fill `[filewords]` in the class prompt
    (from the paired instance image, instance token removed), or the whole class prompt when it has no
    `[filewords]`. `build_caption(class_prompt, class_image)` then gives back the exact generation prompt."""
    template = class_prompt or FILEWORDS
    if FILEWORDS not in template:
        return template.strip()
    return strip_token(filewords(instance_image), instance_token)


def shuffle_tags(caption: str, keep: int, rng) -> str:
    """Shuffle the comma-separated tags of `caption`, the first `keep` staying in front (`rng`: random.Random)."""
    tags = [tag.strip() for tag in caption.split(",")]
    tags = [tag for tag in tags if tag]
    if len(tags) <= max(keep, 1):
        return caption
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def warn_truncated(captions: dict[str, list[Path]], layout, warn) -> int:
    """Warn, naming the files, for every caption longer than max_token_length (`layout`: a
    model.long_prompts.PromptLayout); returns how many."""
    count = 0
    for caption, paths in captions.items():
        length = layout.too_long(caption)
        if length:
            count += 1
            names = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            warn(f"caption of {names} is {length} tokens, over max_token_length {layout.max_tokens}: "
                 f"the end is cut off ('{caption[:60]}...'); max_token_length up to 300 keeps more")
    return count
