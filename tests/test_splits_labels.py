"""Deterministic splits and stable label maps (pure)."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from dlspark.config import SplitConfig
from dlspark.labels import LabelMapError, resolve_label_map
from dlspark.splits import split_for_key


def test_split_is_deterministic_and_close_to_fractions():
    cfg = SplitConfig(train=0.7, val=0.2, test=0.1)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    first = [split_for_key(k, cfg) for k in keys]
    assert first == [split_for_key(k, cfg) for k in keys]
    share = {k: v / len(keys) for k, v in Counter(first).items()}
    assert share["train"] == pytest.approx(0.7, abs=0.015)
    assert share["val"] == pytest.approx(0.2, abs=0.015)
    assert share["test"] == pytest.approx(0.1, abs=0.015)


def test_salt_reshuffles():
    keys = [str(i) for i in range(1000)]
    a = [split_for_key(k, SplitConfig()) for k in keys]
    b = [split_for_key(k, SplitConfig(salt="v2")) for k in keys]
    assert a != b


def test_zero_fraction_split_gets_nothing():
    cfg = SplitConfig(train=1.0, val=0.0, test=0.0)
    assert {split_for_key(str(i), cfg) for i in range(500)} == {"train"}


def test_label_map_fixed_order():
    assert resolve_label_map(fixed=["b", "a"], stored=None, observed=["a"]) == {"b": 0, "a": 1}


def test_label_map_extends_without_moving_indices():
    first = resolve_label_map(fixed=None, stored=None, observed=["dog", "cat"])
    assert first == {"cat": 0, "dog": 1}
    assert resolve_label_map(fixed=None, stored=first, observed=["ant", "dog"]) == {"cat": 0, "dog": 1, "ant": 2}


def test_label_map_conflict_with_stored_is_an_error():
    with pytest.raises(LabelMapError, match="new output path"):
        resolve_label_map(fixed=["x", "y"], stored={"y": 0, "x": 1}, observed=[])
