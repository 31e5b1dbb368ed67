"""Workflow specs at the API's edge: validation on publish (the engine's), input schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from jsonschema.protocols import Validator  # type: ignore[import-untyped]

from cadenza_common.workflow import validate_workflow
from cadenza_trigger_api.errors import InputInvalid, SpecInvalid


def check_publishable(doc: Mapping[str, Any]) -> None:
    """Validate a spec for publishing.

    Raises:
        SpecInvalid: with every problem (path, code, message) at once.
    """
    errors = validation_errors(doc)
    if errors:
        raise SpecInvalid(f"{len(errors)} problem(s) in the workflow spec", errors=errors)


def validation_errors(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every problem the engine's validator finds, plus an unusable `inputs` schema."""
    errors: list[dict[str, str]] = []
    result = validate_workflow(doc)
    errors += [{"path": i.path, "code": i.code, "message": i.message} for i in result.errors]
    errors += _inputs_errors(doc.get("inputs"))
    return errors


def _inputs_errors(schema: Any) -> list[dict[str, str]]:
    if schema is None:
        return []
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except (jsonschema.SchemaError, TypeError, AttributeError) as exc:
        message = getattr(exc, "message", str(exc))
        return [{"path": "inputs", "code": "invalid_input_schema", "message": message}]
    return []


def input_validator(spec: Mapping[str, Any]) -> Validator | None:
    """A validator for the trigger payload, or None when the spec declares no `inputs`."""
    schema = spec.get("inputs")
    if not isinstance(schema, dict):
        return None
    cls = jsonschema.validators.validator_for(schema)
    validator: Validator = cls(schema)
    return validator


def check_input(validator: Validator | None, payload: Any) -> None:
    """Check an execution's input against the workflow's `inputs` schema.

    Raises:
        InputInvalid: with every violation.
    """
    if validator is None:
        return
    errors = [
        {
            "path": "input" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}"
                                      for p in e.absolute_path),
            "code": str(e.validator),
            "message": e.message,
        }
        for e in validator.iter_errors(payload)
    ]
    if errors:
        raise InputInvalid(f"{len(errors)} problem(s) in the input", errors=errors)
