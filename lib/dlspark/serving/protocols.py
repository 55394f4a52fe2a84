"""The request and response shapes of the protocols users' clients already speak, beside ``POST /predict``.

* KServe / Open Inference Protocol v2 (REST): ``POST /v2/models/{name}/infer`` with
  ``{"id": ..., "inputs": [{"name", "shape", "datatype", "data"}]}``. Image models take ``BYTES`` elements
  holding base64 image files (what KServe's JSON clients send) or a ``UINT8`` tensor ``[N, H, W, C]`` of
  pixels; text models take ``BYTES`` texts. The answer has outputs ``label`` (BYTES), ``label_index`` (INT64)
  and ``probability`` (FP32), each of shape ``[N]``; ``outputs: [{"name": ...}]`` in the request keeps a subset.
* TF-Serving REST: ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}`` (row format) or
  ``{"inputs": [...]}`` (columnar, one input). An instance is ``{"b64": "..."}`` (an image file), a string (a
  text), a nested list of pixel values ``[H, W, C]``, or an object with one of those under ``image``/``text``/
  ``b64``. The answer is ``{"predictions": [{"label", "label_index", "probability", "top_k"}]}``.

Pure code, like :mod:`dlspark.serving.payload`: each parser returns instances or raises
:class:`~dlspark.serving.payload.PayloadError` with the status and a message that says what to send.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping, Sequence

import numpy as np

from dlspark.serving.payload import Instance, PayloadError

V2_OUTPUTS = ("label", "label_index", "probability")
V2_DATATYPES = {"label": "BYTES", "label_index": "INT64", "probability": "FP32"}


def _json(body: bytes, example: str) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(400, "bad_json", f"the body is not valid JSON ({exc}); send {example}") from exc


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PayloadError(400, "bad_base64", f"{where}: not valid base64 ({exc})") from exc


# ---- Open Inference Protocol v2 ----

V2_EXAMPLE = '{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64 file>"]}]}'


def parse_v2_infer(body: bytes, kind: str) -> tuple[list[Instance], str | None, list[str]]:
    """(instances, request id, requested output names) of a v2 inference request for a ``kind`` model."""
    doc = _json(body, V2_EXAMPLE)
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise PayloadError(400, "bad_instances", f"a v2 request needs exactly one entry in 'inputs'; send {V2_EXAMPLE}")
    tensor = inputs[0]
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise PayloadError(400, "bad_instances", f"input {tensor.get('name')!r}: 'shape' must be a list of sizes, got {shape!r}")
    if not isinstance(data, list):
        raise PayloadError(400, "bad_instances", f"input {tensor.get('name')!r}: 'data' must be a list")
    instances = _v2_instances(tensor.get("name"), datatype, shape, data, kind)
    if not instances:
        raise PayloadError(400, "bad_instances", "the input holds no element to score")
    wanted = [str(o.get("name")) for o in doc.get("outputs") or [] if isinstance(o, dict)]
    if unknown := sorted(set(wanted) - set(V2_OUTPUTS)):
        raise PayloadError(400, "bad_outputs", f"unknown outputs {unknown}; this model gives {list(V2_OUTPUTS)}")
    request_id = doc.get("id")
    return instances, None if request_id is None else str(request_id), wanted or list(V2_OUTPUTS)


def _v2_instances(name: Any, datatype: Any, shape: list[int], data: list, kind: str) -> list[Instance]:
    flat = _flatten(data)
    if datatype == "BYTES":
        if len(shape) != 1 or shape[0] != len(flat):
            raise PayloadError(400, "bad_instances", f"input {name!r}: BYTES shape must be [N] with N = {len(flat)} elements")
        if not all(isinstance(v, str) for v in flat):
            raise PayloadError(400, "bad_instances", f"input {name!r}: BYTES elements must be strings (JSON)")
        if kind == "text":
            return [Instance(text=v) for v in flat]
        return [Instance(image=_b64(v, f"input {name!r} element {i}")) for i, v in enumerate(flat)]
    if datatype == "UINT8" and kind == "image":
        if len(shape) != 4:
            raise PayloadError(400, "bad_instances", f"input {name!r}: a UINT8 pixel tensor has shape [N, H, W, C], got {shape}")
        try:
            pixels = np.asarray(flat, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise PayloadError(400, "bad_instances", f"input {name!r}: UINT8 data must be integers") from exc
        if pixels.size != int(np.prod(shape)) or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
            raise PayloadError(400, "bad_instances", f"input {name!r}: {pixels.size} values in 0..255 expected "
                                                     f"{int(np.prod(shape))} for shape {shape}")
        tensor = pixels.astype(np.uint8).reshape(shape)
        return [Instance(pixels=tensor[i]) for i in range(shape[0])]
    accepted = "BYTES (base64 image files) or UINT8 [N, H, W, C]" if kind == "image" else "BYTES (texts)"
    raise PayloadError(400, "bad_datatype", f"input {name!r}: datatype {datatype!r}; a {kind} model takes {accepted}")


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def v2_response(model_name: str, version: str | None, request_id: str, predictions: Sequence[Mapping[str, Any]],
                outputs: Sequence[str]) -> dict[str, Any]:
    """The v2 inference response for ``predictions`` (the dicts ``POST /predict`` returns)."""
    n = len(predictions)
    return {"model_name": model_name, "model_version": version, "id": request_id,
            "outputs": [{"name": name, "shape": [n], "datatype": V2_DATATYPES[name],
                         "data": [p["label" if name == "label" else "index" if name == "label_index" else "probability"]
                                  for p in predictions]} for name in outputs]}


def v2_metadata(model_name: str, version: str | None, kind: str, flavor: str,
                image_shape: Sequence[int] | None) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's name, version, platform, inputs and outputs."""
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}] if kind == "text" else [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, *[int(d) for d in image_shape or ()]]}]
    return {"name": model_name, "versions": [version] if version else [], "platform": f"dlspark-{flavor}",
            "inputs": inputs, "outputs": [{"name": n, "datatype": V2_DATATYPES[n], "shape": [-1]} for n in V2_OUTPUTS]}


# ---- TF-Serving REST ----

TF_EXAMPLE = '{"instances": [{"b64": "<base64 image file>"}]} or {"instances": ["a text"]}'


def parse_tf_predict(body: bytes, kind: str) -> list[Instance]:
    """The instances of a TF-Serving ``:predict`` request (row ``instances`` or columnar ``inputs``)."""
    doc = _json(body, TF_EXAMPLE)
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        raise PayloadError(400, "bad_instances", f"a :predict body has exactly one of 'instances' or 'inputs'; send {TF_EXAMPLE}")
    rows = doc.get("instances", doc.get("inputs"))
    if isinstance(rows, dict):                              # columnar with a named input
        if len(rows) != 1:
            raise PayloadError(400, "bad_instances", f"'inputs' names {len(rows)} inputs; this model takes one")
        rows = next(iter(rows.values()))
    if not isinstance(rows, list) or not rows:
        raise PayloadError(400, "bad_instances", f"'instances' must be a non-empty list; send {TF_EXAMPLE}")
    return [_tf_instance(row, i, kind) for i, row in enumerate(rows)]


def _tf_instance(row: Any, index: int, kind: str) -> Instance:
    if isinstance(row, dict):
        if "b64" in row:
            return Instance(image=_b64(row["b64"], f"instance {index}"))
        named = [k for k in ("image", "text", "pixels") if k in row]
        if len(row) != 1 or not named:
            raise PayloadError(400, "bad_instances", f"instance {index}: expected {{'b64': ...}} or one of 'image', "
                                                     f"'text', 'pixels'; got keys {sorted(row)}")
        return _tf_instance(row[named[0]], index, kind)
    if isinstance(row, str):
        return Instance(text=row)
    if isinstance(row, list):
        try:
            pixels = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PayloadError(400, "bad_instances", f"instance {index}: pixels must be a nested list of numbers") from exc
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
            raise PayloadError(400, "bad_instances", f"instance {index}: pixels must be [H, W, C] (or [H, W]) values "
                                                     f"in 0..255, got shape {list(pixels.shape)}")
        return Instance(pixels=pixels.astype(np.uint8))
    raise PayloadError(400, "bad_instances", f"instance {index}: {type(row).__name__} is not an image, text or pixels")


def tf_response(predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """TF-Serving's row-format answer."""
    return {"predictions": [{"label": p["label"], "label_index": p["index"], "probability": p["probability"],
                             "top_k": p["top_k"]} for p in predictions]}


def tf_status(version: str | None) -> dict[str, Any]:
    """``GET /v1/models/{name}``: TF-Serving's model status."""
    return {"model_version_status": [{"version": version or "", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
