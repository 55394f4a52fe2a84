"""Post-training optimisation: dynamic int8 quantization (torch, onnxruntime) and L1 magnitude pruning.

Each function returns a new model (the input is left as it was) so a caller can measure float vs optimised
side by side (``bench/optimize_bench.py``). What each does, and does not do:

- :func:`quantize_torch_int8`: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` — int8 weights,
  activations quantized on the fly. Convolutions stay float (dynamic quantization has no conv kernels), so a
  CNN gains little; a transformer (MiniLM: almost all Linear) gains most. CPU (fbgemm/x86) only.
- :func:`quantize_onnx_int8`: onnxruntime's ``quantize_dynamic`` (QInt8 weights) on ``MatMul``/``Gemm`` nodes;
  ``Conv`` stays float by default for the same reason (and onnxruntime's CPU ConvInteger takes uint8 only).
- :func:`quantize_onnx_static`: onnxruntime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations
  with ranges calibrated on real rows): convolutions too. Weights use 7 bits (``reduce_range``): on AVX2 without
  VNNI the u8 x s8 kernels saturate, and 8-bit weights cost the Fashion-MNIST CNN 2.5 points, 7-bit 0.2 (measured).
- :func:`prune_l1`: global unstructured L1 magnitude pruning of Linear and Conv weights (embeddings, biases and
  norms untouched), made permanent with ``prune.remove``. The zeros are still stored densely: the file does
  not shrink, only its compressed size does (:func:`file_sizes`), and dense kernels run no faster.
"""
from __future__ import annotations

import copy
import gzip
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def quantize_torch_int8(model: Any) -> Any:
    """A copy of ``model`` (eval mode) with every ``nn.Linear`` replaced by a dynamically quantized int8 Linear.

    Raises
    ------
    ValueError
        When the model has no ``nn.Linear`` (nothing would change).
    """
    import torch
    from torch import nn

    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; dynamic int8 quantization would change "
                         "nothing (convolutions are not dynamically quantized) — use static quantization instead")
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still works in 2.x
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def quantize_onnx_int8(onnx_path: str | Path, out_path: str | Path, *,
                       op_types: tuple[str, ...] = ("MatMul", "Gemm")) -> Path:
    """Write a dynamically quantized copy of ``onnx_path`` (int8 weights of ``op_types`` nodes) to ``out_path``.

    Raises
    ------
    ValueError
        When the model has no node of ``op_types`` (nothing would be quantized).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    present = {node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    if not present & set(op_types):
        raise ValueError(f"{onnx_path} has no {'/'.join(op_types)} node to quantize (it has {sorted(present)}); "
                         "pass op_types naming the ops to quantize")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    return out_path


def quantize_onnx_static(onnx_path: str | Path, out_path: str | Path, calibration: Any, *, batch_size: int = 64) -> Path:
    """Write a statically quantized (QDQ) copy of ``onnx_path`` to ``out_path``, activation ranges calibrated (min/max)
    on ``calibration`` (rows in the model's input form, e.g. a few hundred training rows).

    Raises
    ------
    ValueError
        When there are no calibration rows.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        raise ValueError("static int8 quantization needs calibration rows (e.g. the first rows of the train split)")
    name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    batches = [{name: calibration[i:i + batch_size]} for i in range(0, len(calibration), batch_size)]

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.rows, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_name(f"{out_path.stem}-prepared.onnx")
    quant_pre_process(str(onnx_path), str(prepared))   # shape inference + graph optimisation (BatchNorm folded)
    quantize_static(str(prepared), str(out_path), Rows(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    prepared.unlink(missing_ok=True)
    return out_path


def prune_l1(model: Any, amount: float = 0.5) -> Any:
    """A copy of ``model`` with the ``amount`` smallest-magnitude Linear/Conv weights (over all of them) set to 0.

    Raises
    ------
    ValueError
        When ``amount`` is not in [0, 1) or the model has no Linear/Conv layer.
    """
    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise ValueError(f"prune amount must be a fraction in [0, 1), got {amount}")
    pruned = copy.deepcopy(model).eval()
    params = list(_prunable(pruned))
    if not params:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to prune")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)  # bake the mask into the weight: a plain module again
    return pruned


def sparsity(model: Any) -> float:
    """Fraction of zeros among the Linear/Conv weights :func:`prune_l1` prunes."""
    total = zeros = 0
    for module, name in _prunable(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def file_sizes(path: str | Path) -> dict[str, int]:
    """``{"bytes": size on disk, "gzip_bytes": size gzip-compressed (level 6)}`` of one file."""
    path = Path(path)
    counter = _CountingSink()
    with path.open("rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as gz:
        shutil.copyfileobj(src, gz, 1 << 20)
    return {"bytes": path.stat().st_size, "gzip_bytes": counter.size}


def save_torch(model: Any, path: str | Path) -> Path:
    """Save ``model``'s ``state_dict`` (what a checkpoint stores) with ``torch.save``; returns ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), str(path))
    return path


def _prunable(model: Any) -> Iterator[tuple[Any, str]]:
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            yield module, "weight"


class _CountingSink:
    """A write-only file object that only counts bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass
