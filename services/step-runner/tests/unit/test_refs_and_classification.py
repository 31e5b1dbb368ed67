"""`${env.*}`/`${secrets.*}` resolution, Retry-After parsing and secret scrubbing."""

from __future__ import annotations

import pytest

from cadenza_step_runner.calls import retry_after_seconds
from cadenza_step_runner.handlers import REDACTED, child_traceparent, scrub
from cadenza_step_runner.refs import RefSource, Resolver, UnresolvedReference


def test_whole_and_embedded_references_resolve_and_secrets_are_remembered() -> None:
    resolver = Resolver(RefSource(env={"HOST": "api"}, secrets={"KEY": "k-1"}))

    value = resolver.resolve({"a": ["${env.HOST}", "Bearer ${secrets.KEY}"], "n": 3})

    assert value == {"a": ["api", "Bearer k-1"], "n": 3}
    assert resolver.used_secrets == {"k-1"}


def test_unknown_reference_raises() -> None:
    with pytest.raises(UnresolvedReference, match=r"secrets\.NOPE"):
        Resolver(RefSource()).resolve("${secrets.NOPE}")


def test_only_prefixed_variables_are_exposed() -> None:
    source = RefSource.from_environ(
        {"CADENZA_ENV_REGION": "eu", "CADENZA_SECRETS_TOKEN": "t", "CADENZA_SECRET_KEY": "x"}
    )

    assert source.env == {"REGION": "eu"}
    assert source.secrets == {"TOKEN": "t"}


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10
    assert retry_after_seconds("soon") is None


def test_scrub_removes_secret_values_everywhere() -> None:
    assert scrub({"a": ["x-SECRET-y"]}, {"SECRET"}) == {"a": [f"x-{REDACTED}-y"]}


def test_traceparent_continues_the_incoming_trace() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    child = child_traceparent(parent)

    assert child.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert child.split("-")[2] != "b7ad6b7169203331"


def test_escaped_references_from_the_scheduler_stay_data() -> None:
    resolver = Resolver(RefSource(env={"REGION": "eu"}, secrets={"TOKEN": "s3cr3t"}))

    resolved = resolver.resolve({"note": "$${secrets.TOKEN} is text", "auth": "${secrets.TOKEN}"})

    assert resolved == {"note": "${secrets.TOKEN} is text", "auth": "s3cr3t"}
    assert resolver.used_secrets == {"s3cr3t"}
