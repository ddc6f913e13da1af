"""JSON Schema of every wire message, generated from the dataclasses in ``messages`` (served at /schema)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from transports.messages import CLIENT_MESSAGES, PROTOCOL_VERSION, SERVER_MESSAGES
from transports.wire import INT_MAX, INT_MIN, WIRE_NAMES


def _schema_for(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(hint)
    if hint is int:
        return {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is bytes:
        return {
            "type": "string",
            "contentEncoding": "base64",
            "description": "msgpack bin in binary frames, base64 string in JSON text frames",
        }
    if hint is Any:
        return {"type": ["string", "number", "integer", "boolean", "null"]}
    if origin is Literal:
        return {"enum": list(get_args(hint))}
    if origin is list:
        return {"type": "array", "items": _schema_for(get_args(hint)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_for(get_args(hint)[1], defs)}
    if origin in (typing.Union, types.UnionType):
        options = [_schema_for(a, defs) for a in get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = _object_schema(hint, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no schema for {hint!r}")


def _object_schema(cls: type[Any], defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    kind = getattr(cls, "type", None)
    if isinstance(kind, str):
        props["type"] = {"const": kind}
        required.append("type")
    for f in dataclasses.fields(cls):
        wire_name = WIRE_NAMES.get(f.name, f.name)
        props[wire_name] = _schema_for(hints[f.name], defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(wire_name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def build_schema() -> dict[str, Any]:
    """The whole protocol: ``client`` and ``server`` message unions plus shared definitions."""
    defs: dict[str, Any] = {}
    client = {cls.type: _object_schema(cls, defs) for cls in CLIENT_MESSAGES}
    server = {cls.type: _object_schema(cls, defs) for cls in SERVER_MESSAGES}
    for name, schema in client.items():
        defs[f"client.{name}"] = schema
    for name, schema in server.items():
        defs[f"server.{name}"] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"voxpipe wire protocol v{PROTOCOL_VERSION}",
        "description": "Every message is one map with a string 'type'. Binary WebSocket frames carry "
        "msgpack, text frames JSON.",
        "$defs": defs,
        "properties": {
            "client": {"oneOf": [{"$ref": f"#/$defs/client.{n}"} for n in client]},
            "server": {"oneOf": [{"$ref": f"#/$defs/server.{n}"} for n in server]},
        },
    }
