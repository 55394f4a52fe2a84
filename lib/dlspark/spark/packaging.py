"""What ``spark-submit.sh`` ships and how it launches: the package bundle, the conf archive, the master.

The dlspark distribution (``lib/dlspark`` + ``pipelines``) is built as a wheel, cached until a file under
``lib/`` or ``pipelines/`` (or ``setup.py``) changes, and copied to ``dlspark-<digest>.zip`` for ``--py-files``
(PySpark only puts ``.zip``/``.egg``/``.jar`` files on executors' ``sys.path``; a pure-Python wheel is a
zip). ``conf/`` is zipped for ``--archives conf.zip#conf`` in cluster deploy mode. Pure code: no Spark.

    python -m dlspark.spark.packaging bundle --repo . --build-dir build/spark-submit
    python -m dlspark.spark.packaging settings -- --profile standalone --set spark.master=spark://h:7078
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dlspark.cli import EXIT_BAD_CONFIG, EXIT_OK, config_from_args, job_parser
from dlspark.config import ConfigError

log = logging.getLogger(__name__)

PY_FILES_NAME = "dlspark-{digest}.zip"   # a new name per source digest: a running job's bundle never changes under it
KEEP_BUNDLES = 4
CONF_ARCHIVE_NAME = "conf.zip"
_SKIP_PARTS = ("__pycache__", ".egg-info", ".pytest_cache")


class BundleError(RuntimeError):
    """Building the ``--py-files`` bundle failed; the message carries the builder's output tail."""


@dataclass(frozen=True)
class SubmitSettings:
    """The launch settings ``spark-submit`` needs before the job itself loads its config."""

    master: str
    deploy_mode: str
    python: str
    driver_memory: str


def source_files(repo: Path) -> list[Path]:
    """The files that make up the dlspark distribution, sorted (``setup.py``, ``lib/``, ``pipelines/``)."""
    files = [repo / "setup.py"]
    for top in ("lib", "pipelines"):
        files.extend(p for p in (repo / top).rglob("*") if p.is_file() and not _skipped(p))
    return sorted(files)


def source_digest(repo: Path) -> str:
    """Hash of the distribution's file names and contents: the bundle's cache key."""
    digest = hashlib.sha256()
    for path in source_files(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def py_files_bundle(repo: Path, build_dir: Path) -> Path:
    """Return ``build_dir/dlspark-<source digest>.zip`` (the wheel's bytes), building it only when sources changed.

    Each source state gets its own file, written atomically and never rewritten: a job still running imports from
    its bundle by path (zipimport rereads the file), so rebuilding in place broke running jobs with "bad local file
    header" when another submit changed the sources. The :data:`KEEP_BUNDLES` newest bundles are kept.
    """
    want = source_digest(repo)
    bundle = build_dir / PY_FILES_NAME.format(digest=want)
    if bundle.is_file():
        log.info("reusing %s (sources unchanged)", bundle)
        return bundle
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=build_dir) as tmp:
        wheel = build_wheel(repo, Path(tmp))
        for old in build_dir.glob("dlspark-*.whl"):
            old.unlink(missing_ok=True)
        shutil.copyfile(wheel, Path(tmp) / bundle.name)
        os.replace(wheel, build_dir / wheel.name)
        os.replace(Path(tmp) / bundle.name, bundle)
    for old in sorted(build_dir.glob(PY_FILES_NAME.format(digest="*")), key=lambda p: p.stat().st_mtime)[:-KEEP_BUNDLES]:
        old.unlink(missing_ok=True)
    log.info("built %s and %s", wheel.name, bundle)
    return bundle


def build_wheel(repo: Path, out_dir: Path) -> Path:
    """Build the dlspark wheel from a clean copy of the sources (no stale ``build/lib`` files) into ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="dlspark-wheel-") as tmp:
        src = Path(tmp) / "src"
        _copy_sources(repo, source_files(repo), src)
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out_dir), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(out_dir.glob("dlspark-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise BundleError(f"pip wheel failed (exit {proc.returncode}); fix setup.py or the sources:\n{tail}")
    return wheels[-1]


def conf_archive(conf_dir: Path, build_dir: Path) -> Path:
    """Zip the YAML files of ``conf_dir`` (paths relative to it) to ``build_dir/conf.zip``."""
    if not (conf_dir / "base.yaml").is_file():
        raise BundleError(f"{conf_dir} has no base.yaml: pass the repo's conf/ folder")
    build_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(conf_dir.rglob("*.yaml")):
            zf.write(path, path.relative_to(conf_dir).as_posix())
    archive = build_dir / CONF_ARCHIVE_NAME
    _write_atomically(archive, buffer.getvalue())
    return archive


def submit_settings(job_args: Sequence[str]) -> SubmitSettings:
    """Read master, deploy mode, executor python and driver memory from a job's ``--profile/--conf/--set`` args."""
    args, _ = job_parser(None).parse_known_args(list(job_args))
    cfg = config_from_args(args, pipeline=None).spark
    return SubmitSettings(cfg.master, cfg.deploy_mode, cfg.python or "", cfg.driver_memory)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI used by ``spark-submit.sh``: ``bundle`` prints two paths, ``settings`` prints four lines."""
    logging.basicConfig(level=logging.INFO, format="[packaging] %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "bundle":
        repo, build_dir = Path(args.repo).resolve(), Path(args.build_dir).resolve()
        _emit([py_files_bundle(repo, build_dir), conf_archive(repo / "conf", build_dir)])
        return EXIT_OK
    try:
        s = submit_settings(args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return EXIT_BAD_CONFIG
    _emit([s.master, s.deploy_mode, s.python, s.driver_memory])
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlspark.spark.packaging", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bundle = sub.add_parser("bundle", help="build (or reuse) dlspark-<digest>.zip and conf.zip")
    bundle.add_argument("--repo", default=".", help="repository root (has setup.py, lib/, conf/)")
    bundle.add_argument("--build-dir", default="build/spark-submit", help="where the bundle is cached")
    settings = sub.add_parser("settings", help="master, deploy mode, python, driver memory for the job args")
    settings.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's arguments, after --")
    return parser


def _emit(lines: Iterable[object]) -> None:
    for line in lines:
        text = str(line)
        if "\n" in text:
            raise ValueError(f"value {text!r} spans lines; spark-submit.sh reads one value per line")
        sys.stdout.write(text + "\n")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _copy_sources(repo: Path, files: Iterable[Path], dest: Path) -> None:
    for path in files:
        target = dest / path.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _skipped(path: Path) -> bool:
    return path.suffix == ".pyc" or any(part.endswith(_SKIP_PARTS) for part in path.parts)


if __name__ == "__main__":
    sys.exit(main())
