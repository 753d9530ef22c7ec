"""Atomic output folders: a failed compile never leaves a half-written one.

Everything is written into a hidden temporary folder beside the target and
renamed into place at the end.  An existing target is replaced only when
asked to, and only if it is empty or was written by relugate.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relugate.compiler.errors import BundleError

MARKER = "report.json"


def check_target(target: Path, overwrite: bool) -> None:
    """Fail early (before any work) when ``target`` cannot be written."""
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is not a folder")
    if not overwrite:
        raise BundleError(f"{target} already exists; pass --force to replace it")
    if any(target.iterdir()) and not (target / MARKER).is_file():
        raise BundleError(
            f"{target} is not empty and was not written by relugate; refusing to replace it"
        )


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``target`` in one rename."""
    check_target(target, overwrite)
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # not tempfile.mkdtemp: its mode 0o700 would stay on the finished folder
        tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise BundleError(f"cannot create {target}: {exc.strerror}") from exc
    try:
        yield tmp
        _commit(tmp, target, overwrite)
    except OSError as exc:  # disk full, permissions, a target that cannot be renamed...
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    check_target(target, overwrite)
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.absolute().parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write one JSON file atomically: a temporary file beside it, then one rename.
    Readers see the old file or the new one, never a half-written one."""
    tmp = path.absolute().parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_json(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
