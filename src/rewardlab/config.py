"""Typed configs from YAML/dicts: every key checked against a dataclass before any work starts; the
chat-template setting every command shares (`chat_template_field`, `PromptFormat`).

`from_dict(PPOConfig, {"lr": 1e-5}, where="ppo")` builds the dataclass; an unknown key or a value of
the wrong type is an `InputError` that names the key path and lists the keys that exist.
`field_docs(PPOConfig)` returns each field's documentation (its line comment), the CLI's help text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from rewardlab.errors import InputError

T = TypeVar("T")


def _accepts(tp: Any, value: Any) -> bool:
    """Whether `value` fits the annotation `tp` (loosely: ints pass for floats, lists for tuples)."""
    if tp is Any or value is None and _is_optional(tp):
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_accepts(args[0], v) for v in value) if args else (
            isinstance(value, (list, tuple)))
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def from_dict(cls: type[T], values: dict | None, where: str) -> T:
    """Build dataclass `cls` from `values`, checking keys and types; nested dataclasses recurse."""
    values = dict(values or {})
    if not isinstance(values, dict):
        raise InputError(f"expected a mapping, got {type(values).__name__}", where, "write the section as `key: value` lines")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            raise InputError(f"unknown key {key!r}", f"{where}.{key}", f"known keys: {', '.join(names)}")
    kwargs = {}
    for key, value in values.items():
        tp = hints[key]
        if not _accepts(tp, value):
            raise InputError(f"{value!r} is not a valid {getattr(tp, '__name__', tp)}", f"{where}.{key}",
                             f"give a {getattr(tp, '__name__', tp)}")
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}.{key}")
        elif isinstance(value, list) and (tp is tuple or typing.get_origin(tp) is tuple):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise InputError(str(e), where) from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, a YAML config file was expected", str(path), "give the config file's path")
    if not path.is_file():
        raise InputError("config file not found", str(path), "check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", str(path), "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"not valid YAML ({getattr(e, 'problem', e)})", where,
                         "fix the YAML syntax there (examples/*.yaml are valid configs)") from None
    if not isinstance(data, dict):
        raise InputError("the config must be a mapping of sections", str(path),
                         "write `section: {key: value}` entries, as in examples/*.yaml")
    return data


def field_docs(cls: type) -> dict[str, str]:
    """Each documented field's text: `metadata["help"]`, else the comment on the field's line in the
    class source (`name: type = default  # doc`) joined with the comment-only lines directly below it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line number -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    docs = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        line = node.end_lineno + 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            parts.append(comments[line])
            line += 1
        if parts:
            docs[node.target.id] = " ".join(parts)
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = f.metadata["help"]
    return docs


# Config keys that decide how a run runs, not what it computes: left out of every resume fingerprint
# (a PPO checkpoint, a pipeline stage), so a run resumes with another thread count.
RUNTIME_SETTINGS = ("threads", "checkpoint_every", "checkpoint_minutes", "keep_checkpoint", "gradient_checkpointing",
                    "mmap_threshold_kib", "parallel_runs")


def without_runtime(config: dict) -> dict:
    """`config` (a config as a dict) without its RUNTIME_SETTINGS keys."""
    return {k: v for k, v in config.items() if k not in RUNTIME_SETTINGS}


# --- the chat-template setting that every command and the `models` section share ---

CHAT_TEMPLATE_MODES = ("auto", "on", "off")
CHAT_TEMPLATE_HELP = ("render prompts with the tokenizer's chat template (one user turn, or the given messages) "
                      "and stop generation at its end-of-turn token: auto (on when the tokenizer has one), on, off")


def chat_template_field() -> Any:
    """The `chat_template` field of a config dataclass: default auto, help text CHAT_TEMPLATE_HELP
    (the setting is applied by `rewardlab.text.set_chat_template`)."""
    return dataclasses.field(default="auto", metadata={"help": CHAT_TEMPLATE_HELP})


def check_chat_template_mode(mode: str, where: str = "chat_template") -> str:
    """`mode` if it is auto, on or off; else InputError naming `where`."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise InputError(f"unknown chat_template setting {mode!r}", where,
                         f"use one of {', '.join(CHAT_TEMPLATE_MODES)}")
    return mode


@dataclasses.dataclass
class PromptFormat:
    """The `--chat-template` option of a command that loads its tokenizer itself."""

    chat_template: str = chat_template_field()
