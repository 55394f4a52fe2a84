"""HTTP request bodies -> instances to score, with the status code and message for every malformed body.

Accepted bodies of ``POST /predict``:

* raw image file bytes, ``Content-Type: image/*`` (or ``application/octet-stream``): one image;
* ``text/plain``: one text;
* JSON ``{"instances": [{"image_b64": "..."} | {"text": "..."}, ...]}``, or one instance at the top level
  (``{"text": "..."}``, ``{"image_b64": "..."}``).

Pure code: no web framework here, so every rule is tested without a server.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


class PayloadError(ValueError):
    """The request cannot be scored; ``status`` is the HTTP code (400, 413, 415, 422), the message says why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Instance:
    """One thing to score: image file bytes or a text."""

    image: bytes | None = None
    text: str | None = None

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "text"


def parse_payload(body: bytes, content_type: str | None) -> list[Instance]:
    """The instances in a request body (see the module docstring for the accepted forms).

    Raises
    ------
    PayloadError
        400 for JSON that does not parse, 415 for an unknown content type, 422 for a well-formed body that
        holds no usable instance (the message names the instance).
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media.startswith("image/") or media == "application/octet-stream":
        return [Instance(image=body)]
    if media == "text/plain":
        return [Instance(text=body.decode("utf-8", errors="replace"))]
    if media in ("application/json", ""):
        return _json_instances(body)
    raise PayloadError(415, "content_type", f"unsupported Content-Type {content_type!r}: send image/* bytes, text/plain, "
                                            'or application/json {"instances": [{"image_b64": ...} | {"text": ...}]}')


def _json_instances(body: bytes) -> list[Instance]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(400, "bad_json", f"the body is not valid JSON ({exc}); send "
                                            '{"instances": [{"image_b64": ...} | {"text": ...}]}') from exc
    if not isinstance(doc, dict):
        raise PayloadError(422, "bad_instances", f"the JSON body must be an object, got {type(doc).__name__}")
    raw = doc["instances"] if "instances" in doc else [doc]
    if not isinstance(raw, list) or not raw:
        raise PayloadError(422, "bad_instances", '"instances" must be a non-empty list of {"image_b64": ...} or '
                                                 '{"text": ...} objects')
    return [_instance(item, i) for i, item in enumerate(raw)]


def _instance(item: Any, index: int) -> Instance:
    if not isinstance(item, dict) or len({"image_b64", "text"} & set(item)) != 1:
        raise PayloadError(422, "bad_instances", f"instance {index}: expected an object with exactly one of "
                                                 f"'image_b64' or 'text', got {_preview(item)}")
    if "text" in item:
        if not isinstance(item["text"], str):
            raise PayloadError(422, "bad_instances", f"instance {index}: 'text' must be a string, got "
                                                     f"{type(item['text']).__name__}")
        return Instance(text=item["text"])
    value = item["image_b64"]
    try:
        return Instance(image=base64.b64decode(value, validate=True))
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PayloadError(422, "bad_base64", f"instance {index}: 'image_b64' is not valid base64 ({exc})") from exc


def _preview(item: Any) -> str:
    text = json.dumps(item)[:80] if isinstance(item, (dict, list, str, int, float)) else type(item).__name__
    return text
