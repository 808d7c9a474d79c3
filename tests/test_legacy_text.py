"""The older extension's text settings: max_token_length (long captions in WebUI-style 75-token windows),
pad_tokens, strict_tokens, freeze_clip_normalization, tenc_weight_decay, tenc_grad_clip_norm."""
import torch
from data_helpers import build, pairs_for, write_image

from dreambooth.model.long_prompts import PromptLayout
from dreambooth.model.text import encode_text

LONG = ", ".join(f"tag{n} word" for n in range(30))  # about 120 tokens


def _content(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_150_token_captions_are_not_cut_and_each_window_is_encoded_like_the_webui(tmp_path, tiny_parts):
    unet, vae, text_encoder, tokenizer = tiny_parts
    tokens = _content(tokenizer, LONG)
    assert 75 < len(tokens) <= 150
    write_image(tmp_path / "inst" / "a.png", 64, 64, caption=LONG)
    _, pairs = pairs_for(tmp_path / "inst")

    cut = build(pairs, tiny_parts, layout=PromptLayout(tokenizer, 75))
    kept = build(pairs, tiny_parts, layout=PromptLayout(tokenizer, 150))
    assert cut.input_ids.shape == (1, 77) and kept.input_ids.shape == (1, 154)
    ids = kept.input_ids[0].tolist()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ids[0] == bos and ids[1:76] == tokens[:75] and ids[76] == eos
    assert ids[77] == bos and ids[78:78 + len(tokens) - 75] == tokens[75:]  # the second window: nothing cut
    assert cut.input_ids[0, 1:76].tolist() == tokens[:75]

    # each 77-token window is encoded on its own and the outputs are joined, as the WebUI does
    with torch.no_grad():
        first = encode_text(text_encoder, kept.input_ids[:, :77])
        second = encode_text(text_encoder, kept.input_ids[:, 77:])
    assert kept.embeddings.shape == (1, 154, text_encoder.config.hidden_size)
    assert torch.allclose(kept.embeddings, torch.cat([first, second], dim=1), atol=1e-6)
    assert not torch.allclose(second, encode_text(text_encoder, torch.tensor([[bos, eos] + [eos] * 75])), atol=1e-4)


def test_short_captions_get_empty_windows_and_pad_tokens_off_trims_the_batch(tmp_path, tiny_parts):
    text_encoder, tokenizer = tiny_parts[2], tiny_parts[3]
    write_image(tmp_path / "inst" / "a.png", 64, 64, caption="a photo of sks toy")
    write_image(tmp_path / "inst" / "b.png", 64, 64, 1, caption="sks toy")
    _, pairs = pairs_for(tmp_path / "inst")
    padded = build(pairs, tiny_parts, layout=PromptLayout(tokenizer, 150, pad_tokens=True))
    trimmed = build(pairs, tiny_parts, layout=PromptLayout(tokenizer, 150, pad_tokens=False))
    generator = torch.Generator().manual_seed(0)
    full = padded.batch([0, 1], generator)
    short = trimmed.batch([0, 1], generator)
    longest = len(_content(tokenizer, "a photo of sks toy")) + 2
    assert full.embeddings.shape[1] == 154 and short.embeddings.shape[1] == longest
    assert short.input_ids.shape[1] == longest
    # CLIP's attention is causal: the trimmed conditioning is exactly the start of the padded one
    assert torch.allclose(short.embeddings, full.embeddings[:, :longest], atol=1e-6)
    # the second window of a short caption is an empty prompt, the WebUI's padding chunk
    empty = encode_text(text_encoder, PromptLayout(tokenizer).tokenize([""])[0])
    assert torch.allclose(full.embeddings[:1, 77:], empty, atol=1e-5)


def test_strict_tokens_wrap_each_part_in_its_own_start_and_end(tiny_parts):
    tokenizer = tiny_parts[3]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = _content(tokenizer, ",")
    ids, used = PromptLayout(tokenizer, strict=True).tokenize(["red hat, blue coat"])
    red, blue = _content(tokenizer, "red hat"), _content(tokenizer, "blue coat")
    expected = [bos] + red + [eos] + comma + [bos] + blue + [eos]
    assert ids[0, :len(expected)].tolist() == expected and used == [len(expected)]
    plain, _ = PromptLayout(tokenizer).tokenize(["red hat, blue coat"])
    assert plain[0, :len(expected)].tolist() != expected
