"""Shipping a characterization (``relugate characterize``'s regions.json) in a bundle.

The file must describe the model being compiled (same sha256); its proved-safe
boxes then tell the runtime which inputs the ORIGINAL network is proved safe on
(``runtime/regions.py``, ``Model.run_detailed``).  It is copied unchanged as
``regions.json`` and hashed in the manifest like every bundle file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relugate.compiler.errors import BadSpec
from relugate.compiler.frontend import LoadedModel
from relugate.runtime.errors import BundleError
from relugate.runtime.regions import parse_regions

REGIONS_FILE = "regions.json"


def read_regions_for(path: Path, loaded: LoadedModel) -> tuple[bytes, dict[str, Any]]:
    """The bytes of ``path`` and a report entry; ``BadSpec`` when it is not a regions file
    or belongs to another model."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise BadSpec(f"--regions: cannot read regions file {path}: {exc}") from exc
    try:
        regions = parse_regions(data, path)
    except BundleError as exc:
        raise BadSpec(f"--regions: {exc}") from exc
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if model.get("sha256") != loaded.sha256:
        raise BadSpec(
            f"--regions {path}: it characterizes another model (sha256 "
            f"{str(model.get('sha256'))[:12]}..., this model {loaded.sha256[:12]}...)"
        )
    entry = {
        "source": str(path),
        "spec": (data.get("spec") or {}).get("path"),
        "safe_boxes": len(regions.lo),
        "safe_volume": regions.volume,
    }
    return raw, entry
