"""Reading and writing artifacts: JSONL records, JSON, safetensors. Every write is atomic.

A write goes to a temporary file in the target's folder and is renamed over the target only when
complete, so a reader (or a re-run after `kill -9`) never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rewardlab.errors import InputError
from rewardlab.text import conversation_prompt


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise InputError("the output path is a folder, a file was expected", str(path), "give a file path")
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    output_folder(path.parent)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain open() would
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # a failed write leaves no folder it made behind (when nothing else went in)
        for folder in created:
            if folder.is_dir() and not any(p for p in folder.iterdir() if p != tmp):
                shutil.rmtree(folder)
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def existing_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is an existing file; InputError saying what it is otherwise."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, a file was expected", str(path), "give the path of a file in it")
    if not path.is_file():
        raise InputError("file not found", str(path), "check the path")
    return path


def output_folder(path: str | os.PathLike) -> Path:
    """Create the folder `path` (and its parents); InputError if it or a parent is an existing file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError("the output folder is an existing file (or lies under one)", str(path),
                         "give a folder path, or move the file away") from None
    return path


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
    path = existing_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", f"{path}:{e.lineno}", "fix the file") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(dumps(row) + "\n")


TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")  # must be strings wherever they are read


def _conversational(row: dict, where: str) -> dict:
    """A row in TRL's conversational format as rewardlab reads it: `messages` (without a `prompt`) or a
    `prompt` given as messages becomes the prompt's one-string form (`rewardlab.text.conversation_prompt`);
    a `messages` list that ends with the assistant's turn is a prompt and its `completion`; a completion
    (`completion`, `chosen`, `rejected`) given as one assistant message becomes its text."""
    row = dict(row)
    try:
        if "prompt" not in row and isinstance(row.get("messages"), list):
            messages = row.pop("messages")
            if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant" \
                    and "completion" not in row:
                row["completion"] = messages[-1].get("content")
                messages = messages[:-1]
            row["prompt"] = conversation_prompt(messages)
        elif isinstance(row.get("prompt"), list):
            row["prompt"] = conversation_prompt(row["prompt"])
    except InputError as e:
        raise InputError(e.what, where, e.fix) from None
    for k in ("completion", "chosen", "rejected"):
        turn = row.get(k)
        if isinstance(turn, list) and len(turn) == 1 and isinstance(turn[0], dict) and turn[0].get("role") == "assistant":
            row[k] = turn[0].get("content")
    return row


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), numbers: Sequence[str] = ()) -> list[dict]:
    """Read a UTF-8 JSONL file of objects; a bad line is an `InputError` naming its line number.

    required: fields every line must have; those in TEXT_FIELDS must be strings. numbers: fields every
    line must have as finite numbers (a target such as a reward). Rows in TRL's conversational format
    (`messages`, or a prompt and completions given as messages) are read as `_conversational` says."""
    path = existing_file(path)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", str(path), "save the file as UTF-8") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON ({e.msg})", where, "one JSON object per line") from None
        if not isinstance(row, dict):
            raise InputError("expected a JSON object", where, "one JSON object per line")
        row = _conversational(row, where)
        missing = [k for k in (*required, *numbers) if k not in row]
        if missing:
            raise InputError(
                f"missing field(s) {', '.join(missing)}", where,
                f"each line needs {', '.join((*required, *numbers))}",
            )
        for k in required:
            if k in TEXT_FIELDS and not isinstance(row[k], str):
                raise InputError(f"field {k!r} is {type(row[k]).__name__}, not text", where,
                                 f"give {k} as a JSON string")
        for k in numbers:
            if isinstance(row[k], bool) or not isinstance(row[k], (int, float)) or not math.isfinite(row[k]):
                raise InputError(f"field {k!r} is {row[k]!r}, not a finite number", where,
                                 f"give {k} as a JSON number")
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
    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return load_file(str(path)), meta
    except SafetensorError as e:
        raise InputError(f"not a readable safetensors file ({e})", str(path),
                         "give a file written by rewardlab, or re-create it") from None
