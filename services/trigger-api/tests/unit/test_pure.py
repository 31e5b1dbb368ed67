"""Pure pieces of the trigger-api: keys, redaction, cursors, rate limits, OpenAPI flattening."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cadenza_common.settings import SecuritySettings
from cadenza_trigger_api.audit import REDACTED, redact
from cadenza_trigger_api.auth import KeyHasher, parse_key
from cadenza_trigger_api.catalog import operations
from cadenza_trigger_api.errors import BadRequest, InputInvalid, RateLimited, Unauthorized
from cadenza_trigger_api.ratelimit import check_limit, window_start
from cadenza_trigger_api.spec import check_input, input_validator, validation_errors
from cadenza_trigger_api.wire import decode_cursor, encode_cursor


def test_minted_keys_parse_back_and_only_their_secret_verifies() -> None:
    hasher = KeyHasher(SecuritySettings())

    new = hasher.mint()
    key_id, secret = parse_key(new.plaintext)

    assert key_id == new.key_id
    assert hasher.hash(secret) == new.secret_hash
    assert hasher.hash(secret + "x") != new.secret_hash


def test_hashes_depend_on_the_server_secret() -> None:
    a = KeyHasher(SecuritySettings(secret_key="one-real-secret-value"))
    b = KeyHasher(SecuritySettings(secret_key="another-real-secret"))

    assert a.hash("s") != b.hash("s")


@pytest.mark.parametrize("bad", ["", "cdz", "cdz_", "cdz_id", "xyz_id_secret", "cdz__secret"])
def test_malformed_keys_are_unauthorized(bad: str) -> None:
    with pytest.raises(Unauthorized):
        parse_key(bad)


def test_redaction_replaces_secret_looking_fields_at_any_depth() -> None:
    doc = {"name": "crm", "apiKey": "sk", "auth": {"secret_ciphertext": "v1:..", "header": "X"},
           "hooks": [{"token": "t", "url": "u"}], "password": None}

    assert redact(doc) == {"name": "crm", "apiKey": REDACTED,
                           "auth": {"secret_ciphertext": REDACTED, "header": "X"},
                           "hooks": [{"token": REDACTED, "url": "u"}], "password": None}


def test_cursors_round_trip_and_reject_garbage() -> None:
    cursor = encode_cursor(["2026-01-01T00:00:00+00:00", "abc"])

    assert decode_cursor(cursor, 2) == ["2026-01-01T00:00:00+00:00", "abc"]
    with pytest.raises(BadRequest):
        decode_cursor("!!!", 2)
    with pytest.raises(BadRequest):
        decode_cursor(cursor, 1)


def test_rate_limit_allows_up_to_the_limit_and_says_when_to_retry() -> None:
    now = datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC)
    start = window_start(now)

    check_limit(10, 10, start, now)
    with pytest.raises(RateLimited) as refused:
        check_limit(11, 10, start, now)

    assert start == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert refused.value.headers["Retry-After"] == "15"


def test_input_schema_violations_name_their_paths() -> None:
    validator = input_validator({"inputs": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "integer"}}}}})

    with pytest.raises(InputInvalid) as bad:
        check_input(validator, {"items": [1, "two"]})

    assert bad.value.errors is not None
    assert bad.value.errors[0]["path"] == "input.items[1]"


def test_an_unusable_inputs_schema_is_a_spec_error() -> None:
    spec = {"slug": "s", "inputs": {"type": "nonsense"},
            "nodes": [{"id": "a", "type": "transform", "expression": "1"}]}

    errors = validation_errors(spec)

    assert any(e["code"] == "invalid_input_schema" for e in errors)


def test_openapi_operations_are_flattened_with_refs_resolved() -> None:
    doc = {
        "paths": {"/pets/{id}": {
            "get": {"operationId": "getPet", "summary": "One pet", "responses": {"200": {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}
            }}},
            "delete": {"responses": {"204": {"description": "gone"}}},
        }},
        "components": {"schemas": {"Pet": {"type": "object",
                                           "properties": {"id": {"type": "string"}}}}},
    }

    ops = {(o.method, o.path): o for o in operations(doc)}

    assert ops[("GET", "/pets/{id}")].response_schema == doc["components"]["schemas"]["Pet"]
    assert ops[("GET", "/pets/{id}")].operation_id == "getPet"
    assert ops[("DELETE", "/pets/{id}")].operation_id == "DELETE /pets/{id}"
    assert ops[("DELETE", "/pets/{id}")].response_schema is None


def test_self_referencing_schemas_do_not_recurse_forever() -> None:
    doc = {"paths": {"/n": {"post": {"requestBody": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Node"}}}}}}},
        "components": {"schemas": {"Node": {"type": "object", "properties": {
            "next": {"$ref": "#/components/schemas/Node"}}}}}}

    (op,) = operations(doc)

    assert op.request_schema is not None
    assert op.request_schema["type"] == "object"
