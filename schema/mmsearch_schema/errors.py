"""Error answers on the wire: the body shapes the services answer, read back as ``(message, code, field)``, and the
conversion between pydantic's ``loc`` paths and the ``field`` strings an error body names (``inputs[3].image``).

The services use these to build their error bodies and to re-home a field path; the client uses them to read any
error body into its exceptions (``mmsearch_client.errors``, which stay the client's own).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["field_to_loc", "loc_to_field", "parse_error_body", "parse_error_text"]


def _is_type_tag(segment: str) -> bool:
    """A pydantic ``loc`` segment naming a union member or validator (``str``, ``Item``, ``function-after[...]``)."""
    return (
        segment[:1].isupper()
        or "[" in segment
        or segment in {"str", "int", "float", "bool", "bytes", "list", "dict", "none", "body"}
    )


def loc_to_field(loc: Any) -> str | None:
    """``["inputs", 3, "Item", "image"]`` -> ``"inputs[3].image"`` (type tags and ``body`` dropped)."""
    if not isinstance(loc, (list, tuple)):
        return None
    out = ""
    for seg in loc:
        if isinstance(seg, bool):
            continue
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif isinstance(seg, str) and seg and not _is_type_tag(seg):
            out += f".{seg}" if out else seg
    return out or None


def field_to_loc(field: str) -> tuple[str | int, ...]:
    """``"documents[3].image"`` -> ``("documents", 3, "image")``: the inverse of :func:`loc_to_field` for the paths
    the services name (dotted names and ``[index]`` subscripts); anything else is one opaque name."""
    loc: list[str | int] = []
    for part in field.split("."):
        name, _, subscripts = part.partition("[")
        if name:
            loc.append(name)
        for sub in subscripts.split("[") if subscripts else ():
            index = sub.removesuffix("]")
            if not index.isdigit() or not sub.endswith("]"):
                return (field,)
            loc.append(int(index))
    return tuple(loc)


def _from_mapping(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    message: str | None = None
    code = body.get("code") if isinstance(body.get("code"), str) else None
    field = next((v for v in (body.get("field"), body.get("param")) if isinstance(v, str)), None)  # OpenAI: param
    err = body.get("error", body.get("message"))
    detail = body.get("detail")
    if isinstance(err, str):
        message = err
    elif isinstance(err, dict):
        return _from_mapping(err)
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        message, field = _validation_detail(detail, field, message)
        code = code or "validation_error"
    elif isinstance(detail, str) and message is None:
        message = detail
    return message, code, field


def _validation_detail(detail: list[Any], field: str | None, message: str | None) -> tuple[str | None, str | None]:
    """BentoML's pydantic validation errors (``{"error": "...", "detail": [{"loc": [...], "msg": ...}]}``): the
    first one's field and message, with how many more there are."""
    first = detail[0]
    field = field or loc_to_field(first.get("loc"))
    msg = first.get("msg")
    if isinstance(msg, str):
        extra = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
        message = f"{field}: {msg}{extra}" if field else f"{msg}{extra}"
    return message, field


def _json_or_none(text: str) -> Any:
    text = text.strip()
    if not text or text[0] not in '[{"':
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_error_body(body: Any) -> tuple[str | None, str | None, str | None]:
    """Extract ``(message, code, field)`` from any error body shape the services answer.

    Handles the mmsearch ``{"error", "code", "field"}`` body, OpenAI's ``{"error": {"message", "param",
    "code"}}``, Cohere's ``{"message"}``, BentoML validation errors (``{"error", "detail": [{"loc", "msg"}]}``),
    BentoML's ``[{"error": ...}]`` list, a bare JSON string, and ``{"detail": "..."}``. Unknown shapes give
    ``(None, None, None)``.
    """
    if isinstance(body, dict):
        return _from_mapping(body)
    if isinstance(body, list):
        for entry in body:
            parsed = parse_error_body(entry)
            if parsed[0] is not None:
                return parsed
        return None, None, None
    if isinstance(body, str) and body.strip():
        nested = _json_or_none(body)
        if nested is not None and not isinstance(nested, str):
            return parse_error_body(nested)
        return body.strip(), None, None
    return None, None, None


def parse_error_text(text: str) -> tuple[str | None, str | None, str | None]:
    """:func:`parse_error_body` of an answer's body as received: JSON when it parses as JSON (a JSON string is its
    value), the text itself otherwise."""
    body = _json_or_none(text)
    return parse_error_body(text if body is None else body)
