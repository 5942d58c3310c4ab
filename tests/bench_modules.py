"""The benchmark scripts under ``bench/``, loaded as modules for their tests.

The scripts import their siblings by name (``procs``, ``loadgen``,
``diskprobe``, ``yupdate``), so their folders go on ``sys.path``: appended,
not prepended, so that ``bench/trace.py`` never shadows the standard
library's ``trace``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["BENCH", "load"]

BENCH = Path(__file__).resolve().parent.parent / "bench"

for _folder in (BENCH, BENCH / "collab"):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))


def load(name: str, path: Path) -> ModuleType:
    """The script at ``path`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
