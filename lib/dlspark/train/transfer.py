"""Transfer learning: start a model from another trained model's weights. Pure torch.

Every tensor whose name and shape match is copied; the rest (a classifier head for another class count) keeps its
fresh initialisation. What then trains is the phase's business (``train.transfer.freeze``, see ``phases``).
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


def load_transferable(model: nn.Module, source: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy ``source``'s tensors into ``model`` where name and shape match; return the names left as initialised.

    Raises
    ------
    ValueError
        When nothing matches: the source is another architecture (or another size of this one).
    """
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ValueError(f"no weight of the transfer source fits this {type(model).__name__} (source has e.g. "
                         f"{sorted(source)[:3]}): train.transfer.model must be a model of the same architecture and size")
    model.load_state_dict({**own, **matched})
    fresh = sorted(k for k in own if k not in matched)
    log.info("transfer: %d of %d tensors from the source model; fresh: %s", len(matched), len(own), fresh or "none")
    return fresh
