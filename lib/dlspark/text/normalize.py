"""Text normalisation before tokenization. Pure code."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_SPACE = re.compile(r"\s+")
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class NormalizeSpec:
    """What ``normalize_text`` does besides NFC and whitespace collapsing."""

    lowercase: bool = False
    mask_urls: bool = True
    mask_mentions: bool = True
    url_token: str = "http"
    mention_token: str = "@user"


def normalize_text(text: str, spec: NormalizeSpec) -> str:
    """NFC-normalise, mask URLs and @mentions, collapse whitespace, strip, optionally lowercase."""
    text = unicodedata.normalize("NFC", text)
    if spec.mask_urls:
        text = _URL.sub(spec.url_token, text)
    if spec.mask_mentions:
        text = _MENTION.sub(spec.mention_token, text)
    text = _SPACE.sub(" ", text).strip()
    return text.lower() if spec.lowercase else text


def has_replacement_chars(text: str) -> bool:
    """True when decoding replaced undecodable bytes with U+FFFD."""
    return REPLACEMENT_CHAR in text
