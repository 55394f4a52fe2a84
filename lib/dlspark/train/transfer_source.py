"""The registered model a transfer-learning run starts from: resolved and loaded once on the driver."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlspark.config import AppConfig, ConfigError


@dataclass(frozen=True)
class TransferSource:
    """The source's weights (CPU tensors, shipped to the training processes in the TrainJob) and lineage tags."""

    weights: dict[str, Any]
    tags: dict[str, str]


def transfer_source(target: Any, cfg: AppConfig) -> TransferSource:
    """Load ``train.transfer.model``: a registered torch model of the architecture ``train.model`` names."""
    from dlspark.export.registered import read_extra_json
    from dlspark.inference.model import load_model
    from dlspark.inference.predictors import load_torch_module

    t = cfg.train.transfer
    bundle = load_model(target, cfg.model_uri(t.model, "champion"))
    spec = read_extra_json(Path(bundle.local_dir), "model_spec.json")
    if bundle.flavor != "pytorch" or spec.get("name") != cfg.train.model:
        raise ConfigError(f"train.transfer.model {bundle.ref.label} is a {bundle.flavor} {spec.get('name')!r} model; "
                          f"a {cfg.train.model!r} run starts from a registered pytorch {cfg.train.model!r} model")
    module = load_torch_module(bundle.local_dir)
    inner = getattr(module, "model", module)          # text models are logged inside StackedTextInput
    weights = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    return TransferSource(weights, {"dlspark.transfer.model": bundle.ref.label, "dlspark.transfer.model_uri": bundle.ref.uri,
                                    "dlspark.transfer.freeze": t.freeze, "dlspark.transfer.top_n": str(t.top_n)})

