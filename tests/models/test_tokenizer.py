"""The CLIP tokenizer built offline must give the exact ids the real Stable Diffusion text encoder expects."""

from __future__ import annotations

import pytest

from portrait_core.models.tokenizer import (
    END_TOKEN,
    START_TOKEN,
    VOCAB_SIZE,
    build_vocab,
    load_clip_tokenizer,
    read_merges,
    write_tokenizer_files,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_clip_tokenizer(write_tokenizer_files(tmp_path_factory.mktemp("tok")))


def test_known_prompt_gives_the_real_clip_ids(tokenizer):
    assert tokenizer("a photo of an astronaut").input_ids == [49406, 320, 1125, 539, 550, 18376, 49407]


def test_vocabulary_has_clip_size_and_special_ids():
    vocab = build_vocab(read_merges())
    assert len(vocab) == VOCAB_SIZE
    assert vocab[START_TOKEN] == 49406 and vocab[END_TOKEN] == 49407
    assert vocab["!"] == 0 and vocab["a</w>"] == 320


@pytest.mark.parametrize("text", ["café crème à la mode", "a selfie 🧑‍🚀🚀 in space", "<lora:x:0.8> portrait"])
def test_unusual_text_tokenizes_without_unknowns_and_round_trips(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407
    assert tokenizer.unk_token_id not in ids[1:-1]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")


def test_lora_tag_is_split_into_plain_tokens(tokenizer):
    tokens = tokenizer.tokenize("<lora:x:0.8>")
    assert tokens[0] == "<</w>" and tokens[-1] == "></w>"
    assert "".join(token.replace("</w>", "") for token in tokens) == "<lora:x:0.8>"


def test_long_prompt_is_truncated_to_77(tokenizer):
    ids = tokenizer("portrait " * 200, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77 and ids[-1] == 49407


def test_sdxl_second_tokenizer_pads_with_exclamation_mark(tmp_path):
    tok = load_clip_tokenizer(write_tokenizer_files(tmp_path, pad_token="!"))
    ids = tok("a", padding="max_length", max_length=8).input_ids
    assert ids == [49406, 320, 49407, 0, 0, 0, 0, 0]
