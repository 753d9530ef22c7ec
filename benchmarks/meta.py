"""The header every benchmark result carries: version, machine, date, and its options."""

from __future__ import annotations

import platform
import time
from typing import Any

from relugate import __version__


def run_meta(**extra: Any) -> dict[str, Any]:
    """``relugate`` version, ``machine`` (architecture and Python), ``date``, then ``extra``."""
    return {
        "relugate": __version__,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        **extra,
    }
