"""Which listed text files Spark's CSV/JSON/Parquet reader is given, and which are rejected before reading.

Spark's file readers skip names starting with ``.`` or ``_`` even when named explicitly, treat ``[ ] ? * { }
\\`` as a glob (and the multi-line CSV reader re-globs an escaped name, so no escaping helps) and refuse ``:``
in a name. Such a file is copied to a safe name in a folder of the run (``aliases`` maps the copy back
to the real name, which is what the table and the quarantine record). Empty files and files that vanished or
changed since listing are not read: they get an outcome row with the reason. Pure code (dlspark.filesystem).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from dlspark.filesystem import qualify, write_bytes
from dlspark.ingest.reading import listing_mismatch, read_listed

_UNSAFE = re.compile(r"^[._]|[\[\]?*{}\\:]")


@dataclass
class ReadableInputs:
    """``paths`` for Spark's reader; ``aliases`` safe copy -> real name; ``listed`` (real name, listed
    modification time, length) of each file read; ``rejected`` (real name, reason, detail) of those not read."""

    copy_root: str
    paths: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    listed: list[tuple[str, datetime, int]] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


def spark_cannot_open(path: str) -> bool:
    """True for a file name that Spark's file readers skip or misread (see the module docstring)."""
    return bool(_UNSAFE.search(path.rsplit("/", 1)[-1]))


def plan_inputs(listed: list[tuple[str, datetime, int]], copy_root: str) -> ReadableInputs:
    """Sort the listed files into readable paths (copying odd names under ``copy_root``) and rejections."""
    plan = ReadableInputs(copy_root)
    for index, (path, modified, length) in enumerate(listed):
        if length == 0:
            plan.rejected.append((path, "empty_file", "file has 0 bytes"))
            continue
        if spark_cannot_open(path):
            got = read_listed(path, modified, length)
            if got.reason:
                plan.rejected.append((path, got.reason, got.detail or ""))
                continue
            alias = qualify(f"{copy_root}/{index:06d}{_suffix(path)}")
            write_bytes(alias, got.content or b"")
            plan.aliases[alias] = path
            plan.paths.append(alias)
        else:
            reason = listing_mismatch(path, modified, length)
            if reason:
                plan.rejected.append((path, *reason))
                continue
            plan.paths.append(path)
        plan.listed.append((path, modified, length))
    return plan


def _suffix(path: str) -> str:
    """The file's extension, kept so that a reader that looks at it (compression codecs) still does."""
    name = path.rsplit("/", 1)[-1].lstrip("._")
    return "." + name.rsplit(".", 1)[-1] if "." in name and not _UNSAFE.search(name.rsplit(".", 1)[-1]) else ""

