"""HTTP request bodies -> instances to score, with the status code and message for every malformed body.

Accepted bodies of ``POST /predict``:

* raw image file bytes, ``Content-Type: image/*`` (or ``application/octet-stream``): one image;
* ``text/plain``: one text;
* ``multipart/form-data`` (``curl -F file=@x.jpg``): every file part is an image (a ``text/plain`` file part
  or a plain field named ``text`` is a text), in the order sent;
* JSON ``{"instances": [{"image_b64": "..."} | {"text": "..."}, ...]}``, or one instance at the top level
  (``{"text": "..."}``, ``{"image_b64": "..."}``).

Pure code: no web framework here, so every rule is tested without a server.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any

import numpy as np


class PayloadError(ValueError):
    """The request cannot be scored; ``status`` is the HTTP code (400, 413, 415, 422), the message says why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Instance:
    """One thing to score: image file bytes, decoded pixels ``[H, W, C]`` uint8, or a text."""

    image: bytes | None = None
    text: str | None = None
    pixels: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"


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
    if media == "multipart/form-data":
        return multipart_instances(body, content_type or "")
    raise PayloadError(415, "content_type", f"unsupported Content-Type {content_type!r}: send image/* bytes, text/plain, "
                                            "multipart/form-data (curl -F file=@x.jpg), or application/json "
                                            '{"instances": [{"image_b64": ...} | {"text": ...}]}')


def multipart_instances(body: bytes, content_type: str) -> list[Instance]:
    """The instances of a ``multipart/form-data`` body: file parts are images (text/plain files are texts), a
    plain field named ``text`` is a text; other plain fields are ignored."""
    if "boundary=" not in content_type:
        raise PayloadError(400, "bad_multipart", "multipart/form-data without a boundary parameter: let the client "
                                                 "set the Content-Type (curl -F file=@x.jpg does)")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
        raise PayloadError(400, "bad_multipart", "the multipart/form-data body does not parse")
    out: list[Instance] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name, filename = part.get_param("name", header="content-disposition"), part.get_filename()
        if filename is None:
            if name == "text":
                out.append(Instance(text=data.decode("utf-8", errors="replace")))
        elif part.get_content_type() == "text/plain":
            out.append(Instance(text=data.decode("utf-8", errors="replace")))
        else:
            out.append(Instance(image=data))
    if not out:
        raise PayloadError(422, "bad_instances", "the multipart/form-data body holds no file part and no 'text' field: "
                                                 "send -F file=@image.jpg or -F text=...")
    return out


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
