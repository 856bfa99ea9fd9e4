"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open-clip-torch ships.

Stable Diffusion's text encoders use OpenAI's CLIP tokenizer (49,408 ids). Its merges list is the
`bpe_simple_vocab_16e6.txt.gz` that open-clip-torch carries; from it we write the `vocab.json` +
`merges.txt` pair that `transformers.CLIPTokenizer` reads, so no hub download is ever needed.
open_clip itself is never imported (it imports torchvision, which may not load beside CPU torch).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from portrait_core.errors import ModelUnavailableError

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# CLIP keeps 49152 - 256 - 2 merges: the byte alphabet (256, twice with "</w>") and two specials fill the rest.
MERGE_COUNT = 49152 - 256 - 2
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def open_clip_vocab_path() -> Path:
    """Locate open-clip-torch's BPE file without importing the package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the CLIP vocabulary ships with open-clip-torch, which is not installed "
            "(pip install --no-deps open-clip-torch==2.20.0)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / VOCAB_FILE_NAME
        if candidate.is_file():
            return candidate
    raise ModelUnavailableError(f"open-clip-torch is installed but has no {VOCAB_FILE_NAME}")


def byte_alphabet() -> list[str]:
    """CLIP's printable stand-in for each byte value, in the order the vocabulary lists them.

    Bytes that are visible Latin-1 characters stand for themselves; the others (control
    characters, space, soft hyphen ...) get code points from 256 upward, in byte order.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in set(visible)]
    return [chr(b) for b in visible] + [chr(256 + n) for n in range(len(hidden))]


def read_merges(vocab_path: Path | None = None) -> list[str]:
    """The merge rules ("a b" per line) from the gzip file, header line skipped."""
    path = vocab_path or open_clip_vocab_path()
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + MERGE_COUNT]
    if len(merges) != MERGE_COUNT:
        raise ModelUnavailableError(f"{path} holds {len(merges)} merges, expected {MERGE_COUNT}")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    """Token -> id: bytes, bytes ending a word, one token per merge, then the two specials."""
    alphabet = byte_alphabet()
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise ModelUnavailableError(f"built a vocabulary of {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_files(folder: Path, pad_token: str = END_TOKEN) -> Path:
    """Write a `transformers.CLIPTokenizer` folder. SD1.5 pads with the end token, SDXL's second with "!"."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_merges()
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
        "bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": pad_token,
        "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return folder


def load_clip_tokenizer(folder: Path):
    """Load a folder written by `write_tokenizer_files` (offline)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
