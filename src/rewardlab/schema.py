"""Typed JSON: dataclasses to JSON data and back, and the JSON Schema they define.

    data = to_json(section)                 # dataclass -> plain JSON data (None fields dropped)
    section = from_json(ProbeSection, data) # JSON data -> dataclass, every key and type checked
    schema = json_schema(Results)           # JSON Schema (draft 2020-12) of the dataclass

The supported annotations are the ones results sections use: bool, int, float, str, `Any`,
`X | None`, `list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Literal[...]` and nested dataclasses.
A field whose value is None is left out of the JSON, and a missing optional field reads as None;
floats that are not finite (nan, inf) are written as null, as JSON has no such numbers.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union

from rewardlab.config import field_docs
from rewardlab.errors import InputError

T = TypeVar("T")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def to_json(obj: Any) -> Any:
    """Plain JSON data of a dataclass (recursively); None-valued fields are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[f.name] = to_json(value)
        return out
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return to_json(obj.item())
    return obj


def _optional(tp: Any) -> tuple[bool, Any]:
    """(whether `tp` admits None, `tp` without None)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, tp


def _decode(tp: Any, value: Any, where: str) -> Any:
    def wrong(what: str) -> InputError:
        return InputError(f"expected {what}, got {type(value).__name__} {str(value)[:60]!r}", where,
                          "re-run the stage that writes it")

    nullable, tp = _optional(tp)
    if value is None:
        if nullable or tp is Any or tp is float:  # a non-finite float was written as null
            return math.nan if tp is float and not nullable else None
        raise wrong(getattr(tp, "__name__", str(tp)))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _decode(arg, value, where)
            except InputError:
                continue
        raise wrong(" or ".join(getattr(a, "__name__", str(a)) for a in args))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong(f"an object ({tp.__name__})")
        return from_json(tp, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise wrong(" | ".join(map(repr, args)))
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise wrong("a list")
        item = args[0] if args else Any
        items = [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise wrong("an object")
        item = args[1] if args else Any
        return {k: _decode(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """`cls` (a dataclass, or an annotation such as dict[str, Estimate]) from JSON data; an unknown
    key, a missing required key or a wrong type is an InputError naming the key path."""
    if not dataclasses.is_dataclass(cls):
        return _decode(cls, data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r}", f"{where}.{unknown[0]}".lstrip("."),
                         f"known keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _decode(hints[name], data[name], f"{where}.{name}".lstrip("."))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if not _optional(hints[name])[0]:
                raise InputError(f"missing key {name!r}", where or cls.__name__, "re-run the stage that writes it")
            kwargs[name] = None
    return cls(**kwargs)


def _schema(tp: Any, defs: dict) -> dict:
    nullable, tp = _optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        out: dict = {}
    elif dataclasses.is_dataclass(tp):
        _define(tp, defs)
        out = {"$ref": f"#/$defs/{tp.__name__}"}
    elif origin in (Union, types.UnionType):
        out = {"anyOf": [_schema(a, defs) for a in args]}
    elif origin is typing.Literal:
        out = {"enum": list(args)}
    elif origin in (list, tuple) or tp in (list, tuple):
        out = {"type": "array", "items": _schema(args[0] if args else Any, defs)}
    elif origin is dict or tp is dict:
        out = {"type": "object", "additionalProperties": _schema(args[1] if args else Any, defs)}
    else:
        names = {bool: "boolean", int: "integer", float: "number", str: "string"}
        if tp not in names:
            raise TypeError(f"unsupported annotation {tp!r}")
        out = {"type": names[tp]}
        if tp is float:
            nullable = True  # non-finite floats are written as null
    return {"anyOf": [out, {"type": "null"}]} if nullable and out else out


def _define(cls: type, defs: dict) -> None:
    if cls.__name__ in defs:
        return
    defs[cls.__name__] = {}  # placeholder: recursion stops here
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    docs = _field_docs(cls)
    defs[cls.__name__] = {
        "type": "object",
        **({"description": doc} if doc and not doc.startswith(cls.__name__ + "(") else {}),
        "properties": {f.name: {**_schema(hints[f.name], defs), **({"description": docs[f.name]} if f.name in docs
                                                                   else {})} for f in fields},
        "required": [f.name for f in fields if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and not _optional(hints[f.name])[0]],
        "additionalProperties": False,
    }


def _field_docs(cls: type) -> dict[str, str]:
    """The field comments of `cls` and its dataclass bases (none for a class made at run time)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            try:
                docs.update(field_docs(base))
            except (OSError, TypeError):  # no source: made by dataclasses.make_dataclass
                continue
    return docs


def json_schema(cls: type, title: str) -> dict:
    """The JSON Schema of dataclass `cls`, every nested dataclass under `$defs`."""
    defs: dict = {}
    _define(cls, defs)
    return {"$schema": SCHEMA_DIALECT, "title": title, "$ref": f"#/$defs/{cls.__name__}", "$defs": defs}
