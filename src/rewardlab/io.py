"""Reading and writing artifacts: JSONL records, JSON, safetensors. Every write is atomic.

A write goes to a temporary file in the target's folder and is renamed over the target only when
complete, so a reader (or a re-run after `kill -9`) never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from rewardlab.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None so files stay valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", str(path), "check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", f"{path}:{e.lineno}", "fix the file") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    """Read a JSONL file of objects; a bad line is an `InputError` naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", str(path), "check the path")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON ({e.msg})", where, "one JSON object per line") from None
            if not isinstance(row, dict):
                raise InputError("expected a JSON object", where, "one JSON object per line")
            missing = [k for k in required if k not in row]
            if missing:
                raise InputError(
                    f"missing field(s) {', '.join(missing)}", where,
                    f"each line needs {', '.join(required)}",
                )
            rows.append(row)
    if not rows:
        raise InputError("no records", str(path), "the file must hold at least one JSON line")
    return rows


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save tensors as safetensors; `metadata` values are stored JSON-encoded."""
    meta = {k: dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and the JSON-decoded metadata written by `save_tensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", str(path), "check the path")
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return load_file(str(path)), meta
