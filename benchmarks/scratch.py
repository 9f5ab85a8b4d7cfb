"""Scratch directories for the benchmarks, removed when the script exits.

The frames, stores and logs a benchmark writes are means, not results (its results are what it prints and
the JSON it is asked for). Left in the system's temporary directory, repeated runs filled a machine's disk:
one run of ``angle_context.py`` left 30 MB, a working session of them 461 MB. Set ``TOMOGAN_BENCH_KEEP=1``
to keep them for a look; their paths are then printed to standard error at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["scratch_directory"]


def scratch_directory(prefix: str = "tomogan-bench-") -> Path:
    """A new directory under the system's temporary directory, removed (with all it holds) at exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(_remove_or_name, path)
    return path


def _remove_or_name(path: Path) -> None:
    if os.environ.get("TOMOGAN_BENCH_KEEP"):
        sys.stderr.write(f"kept {path}\n")
    else:
        shutil.rmtree(path, ignore_errors=True)
