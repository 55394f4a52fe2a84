"""Which rows each rank reads in an epoch, and in what order. Pure code (numpy only).

Sharding rule (the arrow feeder):

1. The split's row groups, in file order, are the *units* of reading. When there are fewer row groups than
   ``2 * world_size`` (e.g. one file per split), every row group is cut into row ranges so that there are at
   least ``8 * world_size`` units: row-range sharding.
2. ``limit_rows`` keeps the first rows in file order (the same rows every epoch).
3. The units are permuted with ``default_rng([seed, epoch])`` (file order when not shuffling); every rank
   computes the same permutation from the footers alone, with no communication.
4. The permuted sequence is cut into ``world_size`` contiguous shares of ``N // W`` or ``N // W + 1`` rows;
   a unit that straddles a cut is read by both ranks, each keeping its own rows. Every row belongs to exactly
   one rank.

Equal batch counts (:func:`target_rows`): every rank yields the same number of rows, hence of batches. Without
``drop_last`` it is the largest share: a shorter rank repeats rows from the start of its own share (the arrow
feeder repeats at most one row per rank; ``N`` divisible by ``W`` repeats none). With ``drop_last`` it is the
smallest share, cut to whole batches. The same rule applies to the petastorm feeder's row-group shards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Unit:
    """Rows ``[start, stop)`` of row group ``row_group`` of file ``file`` (indices into the spec's files)."""

    file: int
    row_group: int
    start: int
    stop: int


@dataclass(frozen=True)
class ReadTask:
    """One row group read by one rank, and the row ranges of it that the rank keeps, in emit order."""

    file: int
    row_group: int
    ranges: tuple[tuple[int, int], ...]


Masks = Mapping[tuple[int, int], np.ndarray]  # (file, row_group) -> bool per row; absent: keep every row


def make_units(row_groups: Sequence[tuple[int, int, int]], world_size: int) -> list[Unit]:
    """Units from ``(file, row_group, num_rows)`` triples: whole row groups, or row ranges when too few."""
    groups = [g for g in row_groups if g[2] > 0]
    pieces = 1 if len(groups) >= 2 * world_size else math.ceil(8 * world_size / max(len(groups), 1))
    units: list[Unit] = []
    for file, rg, rows in groups:
        bounds = np.linspace(0, rows, min(pieces, rows) + 1).round().astype(int)
        units.extend(Unit(file, rg, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return units


def _kept(unit: Unit, masks: Masks) -> int:
    mask = masks.get((unit.file, unit.row_group))
    return unit.stop - unit.start if mask is None else int(mask[unit.start:unit.stop].sum())


def _cut(unit: Unit, kept_rows: int, masks: Masks) -> int:
    """The row index in ``unit`` before which ``kept_rows`` kept rows lie."""
    mask = masks.get((unit.file, unit.row_group))
    if mask is None:
        return unit.start + kept_rows
    positions = np.flatnonzero(mask[unit.start:unit.stop])
    return unit.stop if kept_rows >= len(positions) else unit.start + int(positions[kept_rows])


def limit_units(units: Sequence[Unit], limit: int | None, masks: Masks) -> list[Unit]:
    """The units holding the first ``limit`` kept rows (file order); the last one cut short."""
    if limit is None:
        return list(units)
    out, total = [], 0
    for unit in units:
        kept = _kept(unit, masks)
        if total + kept >= limit:
            out.append(Unit(unit.file, unit.row_group, unit.start, _cut(unit, limit - total, masks)))
            return out
        out.append(unit)
        total += kept
    return out


def epoch_order(units: Sequence[Unit], *, shuffle: bool, seed: int, epoch: int) -> list[Unit]:
    """The units in the order of ``epoch``: a permutation seeded by ``(seed, epoch)``, or file order."""
    if not shuffle:
        return list(units)
    order = np.random.default_rng([seed, epoch]).permutation(len(units))
    return [units[i] for i in order]


def share_bounds(total: int, world_size: int) -> list[int]:
    """Kept-row offsets where each rank's share starts (``world_size + 1`` values, shares differ by <= 1)."""
    return [r * total // world_size for r in range(world_size + 1)]


def rank_share(ordered: Sequence[Unit], masks: Masks, *, rank: int, world_size: int) -> list[Unit]:
    """The units (cut at the share's edges) of ``rank``'s contiguous share of ``ordered``."""
    kept = [_kept(u, masks) for u in ordered]
    bounds = share_bounds(sum(kept), world_size)
    lo, hi = bounds[rank], bounds[rank + 1]
    out, offset = [], 0
    for unit, count in zip(ordered, kept):
        a, b = max(lo, offset), min(hi, offset + count)
        if a < b:
            out.append(Unit(unit.file, unit.row_group, _cut(unit, a - offset, masks), _cut(unit, b - offset, masks)))
        offset += count
    return out


def read_tasks(share: Sequence[Unit]) -> list[ReadTask]:
    """Group a share's units by row group (each row group read once), in order of first appearance."""
    grouped: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for unit in share:
        grouped.setdefault((unit.file, unit.row_group), []).append((unit.start, unit.stop))
    return [ReadTask(f, rg, tuple(ranges)) for (f, rg), ranges in grouped.items()]


def target_rows(share_rows: Sequence[int], batch_size: int, drop_last: bool) -> int:
    """Rows every rank yields this epoch (see the module docstring): equal on every rank."""
    if drop_last:
        return min(share_rows) // batch_size * batch_size
    return max(share_rows)


def plan_rank(row_groups: Sequence[tuple[int, int, int]], masks: Masks, *, rank: int, world_size: int,
              shuffle: bool, seed: int, epoch: int, limit_rows: int | None) -> tuple[list[ReadTask], int, int]:
    """``(read tasks, kept rows of the rank's share, kept rows of the whole split)`` for ``rank`` in ``epoch``."""
    units = limit_units(make_units(row_groups, world_size), limit_rows, masks)
    ordered = epoch_order(units, shuffle=shuffle, seed=seed, epoch=epoch)
    share = rank_share(ordered, masks, rank=rank, world_size=world_size)
    total = sum(_kept(u, masks) for u in units)
    return read_tasks(share), sum(_kept(u, masks) for u in share), total
