"""Stable label -> integer mappings that survive incremental runs. Pure code."""
from __future__ import annotations

from typing import Iterable, Mapping


class LabelMapError(ValueError):
    """The configured labels disagree with the mapping already stored beside the table."""


def resolve_label_map(
    *, fixed: Iterable[str] | None, stored: Mapping[str, int] | None, observed: Iterable[str]
) -> dict[str, int]:
    """Return the mapping to use for this run.

    ``fixed`` (from config) wins and must agree with ``stored``; without it, ``stored`` is kept and
    labels seen for the first time get the next integers in sorted order, so indices never move.
    """
    if fixed is not None:
        mapping = {label: i for i, label in enumerate(fixed)}
        if stored and dict(stored) != mapping:
            raise LabelMapError(
                f"configured labels {list(fixed)} differ from the mapping stored with the table {dict(stored)}; "
                "indices would change under existing rows: restore the old label order or write to a new output path"
            )
        return mapping
    mapping = dict(stored or {})
    for label in sorted(set(observed) - set(mapping)):
        mapping[label] = len(mapping)
    return mapping


def label_index(label: str | None, mapping: Mapping[str, int] | None) -> tuple[int | None, str | None, str | None]:
    """(index, reject reason, detail) of one record's label under ``mapping``.

    Unlabelled input (``mapping`` None) has no index and no rejection; a blank label is ``missing_label``
    and a label outside the mapping ``unknown_label``, so such records are quarantined instead of
    training on a wrong class.
    """
    if mapping is None:
        return None, None, None
    if label is None or not label.strip():
        return None, "missing_label", "no label for this record"
    if label not in mapping:
        return None, "unknown_label", f"label '{label}' is not one of: {', '.join(sorted(mapping))}"
    return mapping[label], None, None
