"""A grant's argument limits and conditions: JSON Schemas (or false) that must compile, point
nowhere outside themselves and, for a limit, fix the type they speak of. Shared by the tool, prompt
and approval keys of a manifest."""

from __future__ import annotations

from typing import Annotated, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BeforeValidator

from mcp_guard.policy.schemas import has_dialect, typed_limit

ArgumentSchema = dict[str, Any] | bool


def _check_schema(value: object) -> object:
    """An argument limit is a JSON Schema (or false); it must compile and never point outside."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        msg = "must be a JSON Schema mapping or false"
        raise ValueError(msg)
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        msg = f"invalid JSON Schema: {exc.message}"
        raise ValueError(msg) from None
    _refuse_refs(value)
    if has_dialect(value):
        msg = "$schema is not allowed in a limit: limits are read as JSON Schema 2020-12"
        raise ValueError(msg)
    return value


def _check_limit(value: object) -> object:
    """A grant's limit also fixes the type it speaks of; one that lets no value through is refused."""
    value = _check_schema(value)
    typed_limit(value)
    return value


def _refuse_refs(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("$ref", "$dynamicRef") and not str(item).startswith("#"):
                msg = f"{key} {item!r} points outside the schema; only local references are allowed"
                raise ValueError(msg)
            _refuse_refs(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_refs(item)


Condition = Annotated[ArgumentSchema, BeforeValidator(_check_schema)]
Limit = Annotated[ArgumentSchema, BeforeValidator(_check_limit)]
