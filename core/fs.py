"""The one write probe: can a directory (or a file's directory) take a new file?

Commands call it before they start Spark or a long job, so a read-only mount, a full
disk or a path under a regular file ends in one line instead of a JVM stack trace.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from core.errors import InputError


def writable_dir(directory: str | os.PathLike) -> str | None:
    """Create ``directory`` if needed and write and delete a probe file in it; None when
    that worked, else the reason it did not (the OS's words)."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".persona-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def writable_file(out: str | os.PathLike) -> Path:
    """An absolute file path that can be created, or an InputError saying why not."""
    path = Path(os.path.expanduser(str(out))).absolute()
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory; give a file path")
    for up in [path.parent, *path.parent.parents]:
        if up.exists():
            if not up.is_dir():
                raise InputError(f"cannot write {path}: {up} is not a directory")
            break
    reason = writable_dir(path.parent)
    if reason is not None:
        raise InputError(f"cannot write {path}: {reason}")
    return path
