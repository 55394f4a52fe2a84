"""Models behind one interface: uint8 images or token ids in, class probabilities out.

A :class:`Predictor` is loaded once per Python worker process (see ``dlspark.inference.scoring``) and
called once per sub-batch. :class:`TorchPredictor` moves uint8 pixels to the device first and normalises
there (a quarter of the bytes of float32), runs under ``torch.inference_mode`` and, on GPUs that have it,
bf16 autocast. ONNX and Keras models live in ``onnx_predictor`` and ``keras_predictor``.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


class Predictor(Protocol):
    """What scoring calls; every method returns float32 probabilities ``[n, classes]``."""

    def predict_images(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """uint8 ``[n, H, W, C]`` (possibly a read-only view of Arrow memory) -> probabilities."""
        ...

    def predict_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int ``[n, L]`` ids and mask -> probabilities."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def check_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 model_hwc: Sequence[Any]) -> None:
    """ValueError unless ``pixels`` is uint8 ``[n, H, W, C]`` fitting the model's ``(H, W, C)`` (non-ints: any)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"pixels must be uint8 [n, H, W, C], got {pixels.dtype} {pixels.shape}")
    if not len(mean) == len(std) == pixels.shape[3]:
        raise ValueError(f"mean {list(mean)} and std {list(std)} need one value per channel ({pixels.shape[3]}); "
                         "take them from the model's extras/preprocessing.json")
    if any(isinstance(want, int) and want != got for want, got in zip(model_hwc, pixels.shape[1:])):
        raise ValueError(f"the model takes (H, W, C) {tuple(model_hwc)} images, got {pixels.shape[1:]}; resize to "
                         "the training size (extras/preprocessing.json) before scoring")


def load_predictor(model_dir: str, flavor: str, *, device: str = "cpu", threads: int | None = None,
                   amp: bool = True) -> Predictor:
    """The predictor for a downloaded MLflow model folder of ``flavor``.

    ``device`` is ``cpu`` or ``cuda[:N]``; ``threads`` caps intra-op threads (None: leave the library default).
    """
    if flavor == "pytorch":
        return TorchPredictor.load(model_dir, device=device, threads=threads, amp=amp)
    if flavor == "onnx":
        from dlspark.inference.onnx_predictor import OnnxPredictor

        return OnnxPredictor(model_dir, threads=threads)
    if flavor in ("keras", "tensorflow"):
        from dlspark.inference.keras_predictor import KerasPredictor

        return KerasPredictor(model_dir, threads=threads)
    if flavor == "tflite":
        from dlspark.inference.keras_predictor import TFLitePredictor

        return TFLitePredictor(model_dir, threads=threads)
    raise ValueError(f"no predictor for flavor {flavor!r}; batch inference runs pytorch, onnx, keras and tflite models")


class TorchPredictor:
    """A ``torch.nn.Module`` in eval mode on one device (image models: float ``[B,C,H,W]``; text: ``[B,2,L]``)."""

    def __init__(self, model: Any, device: str = "cpu", amp: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device)
        try:
            self.model.eval()
        except NotImplementedError:  # torch.export programs (MLflow's default "pt2" format) are traced in eval mode
            pass
        self.amp_dtype = _amp_dtype(self.device) if amp else None

    @classmethod
    def load(cls, model_dir: str, *, device: str = "cpu", threads: int | None = None, amp: bool = True) -> "TorchPredictor":
        """Load the pytorch flavor from a downloaded model folder (see :func:`load_torch_module`)."""
        set_torch_threads(threads)
        return cls(load_torch_module(model_dir), device=device, amp=amp)

    def predict_images(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = _as_tensor(pixels).to(self.device, non_blocking=True)   # uint8 NHWC, still 1 byte a value
            std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
            scale = 1.0 / (255.0 * std_t)
            bias = -torch.tensor(mean, dtype=torch.float32, device=self.device) / std_t
            x = x.permute(0, 3, 1, 2).float().mul_(scale.view(1, -1, 1, 1)).add_(bias.view(1, -1, 1, 1))
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            return self._run(x)

    def predict_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            stacked = torch.from_numpy(np.stack([input_ids, attention_mask], axis=1).astype(np.int64, copy=False))
            return self._run(stacked.to(self.device, non_blocking=True))

    def _run(self, x: "torch.Tensor") -> np.ndarray:
        import torch

        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                logits = self.model(x)
        else:
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def load_torch_module(model_dir: str) -> Any:
    """The logged module, as an eager ``nn.Module`` whenever the model folder says how to build it.

    MLflow 3 saves PyTorch models as ``torch.export`` programs by default, which fix every dimension of the
    input example except the batch, so a text model would only take its training length. With
    ``extras/model_spec.json`` (logged by training) the module is rebuilt eagerly and the exported weights
    loaded into it (same names, strict), so sub-batches can be cut to their longest row.
    """
    import mlflow.pytorch
    import torch

    loaded = mlflow.pytorch.load_model(model_dir, map_location="cpu")
    if isinstance(loaded, torch.jit.ScriptModule):  # a TorchScript export: already takes any batch and length
        return loaded
    spec_path = Path(model_dir) / "extras" / "model_spec.json"
    if not hasattr(loaded, "graph") or not spec_path.is_file():  # eager (pickled) module, or nothing to rebuild from
        return loaded
    from dlspark.models import build_model
    from dlspark.models.servable import servable

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    kind = json.loads((Path(model_dir) / "extras" / "preprocessing.json").read_text(encoding="utf-8"))["kind"]
    eager = servable(build_model(spec), kind)
    eager.load_state_dict(loaded.state_dict(), strict=True)
    return eager.eval()


@functools.lru_cache(maxsize=2)
def eager_module(cache_key: str, model_dir: str) -> Any:
    """The eager float32 module of a model folder in eval mode, once per Python worker (``cache_key``: the pinned
    URI), for work that needs the module itself (gradients, hooks) rather than predictions.

    Raises
    ------
    ValueError
        When the folder holds no way to rebuild an eager module (no ``extras/model_spec.json``).
    """
    model = load_torch_module(model_dir)
    if not hasattr(model, "named_modules") or type(model).__name__ in ("ExportedProgram", "RecursiveScriptModule"):
        raise ValueError(f"{cache_key} loads as {type(model).__name__}, not an eager module: this needs the model's "
                         "extras/model_spec.json (logged by dlspark training) to rebuild it")
    return model.float().eval()


def set_torch_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads (a Spark task owns ``threads`` cores; more would oversubscribe)."""
    import torch

    if threads is not None and threads >= 1 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _as_tensor(array: np.ndarray) -> "torch.Tensor":
    """A tensor sharing ``array``'s memory, read-only Arrow views included (callers never write to it in place)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _amp_dtype(device: "torch.device") -> Any:
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
