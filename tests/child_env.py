"""The environment for a child Python process that must import the llmos under test.

The package under test is the one this process imported: the checkout's python/ folder in a
development tree (with the built _core beside it), the installed wheel in CI (where python/
holds no _core). Children get that folder first on PYTHONPATH, never a guess at python/.
"""

from __future__ import annotations

import os
from pathlib import Path


def package_root() -> str:
    import llmos

    return str(Path(llmos.__file__).resolve().parent.parent)


def child_env(**extra: str) -> dict[str, str]:
    """os.environ with the package under test first on PYTHONPATH, plus `extra`."""
    path = os.pathsep.join(p for p in (package_root(), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
