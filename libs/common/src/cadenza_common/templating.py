"""`${...}` references in workflow specs: parsing, validation and rendering.

Grammar: `${root.path}` where root is `trigger`, `step`, `execution`, `item`, `index`,
`env` or `secrets`, and the path is `.name`, `[0]` or `["key"]` segments. `$${` is a
literal `${`. A string that is exactly one reference takes the referenced value with
its JSON type; otherwise references are interpolated as text.

Injection is impossible by construction: a template is parsed once from the spec and
values are substituted in a single pass, never parsed again. When rendering a request
for the step-runner (`escape_for_runner=True`), every `${` inside substituted data is
escaped as `$${`, so the runner's own pass (`resolve_runner_refs`) can resolve the
spec's `${env.*}`/`${secrets.*}` but never a reference smuggled in through a payload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

ROOTS = frozenset({"trigger", "step", "execution", "item", "index", "env", "secrets"})
RUNNER_ROOTS = frozenset({"env", "secrets"})
MAX_TEMPLATE_LENGTH = 16_384

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_INDEX = re.compile(r"\[(\d+)\]")
_QUOTED = re.compile(r'\["((?:[^"\\]|\\.)*)"\]')


class TemplateSyntaxError(ValueError):
    """A template that does not parse."""


@dataclass(frozen=True)
class Reference:
    """One `${...}` reference: its root and path segments."""

    root: str
    path: tuple[str | int, ...]
    source: str

    @property
    def step_id(self) -> str | None:
        """The node id a `${step.<id>...}` reference points at."""
        if self.root == "step" and self.path and isinstance(self.path[0], str):
            return self.path[0]
        return None


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and references, in order."""

    parts: tuple[str | Reference, ...]

    @property
    def whole(self) -> Reference | None:
        """The reference when the template is exactly one reference."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Reference):
            return self.parts[0]
        return None

    def references(self) -> list[Reference]:
        return [p for p in self.parts if isinstance(p, Reference)]


@lru_cache(maxsize=4096)
def parse_template(text: str) -> Template:
    """Parse a string into literal parts and references.

    Raises:
        TemplateSyntaxError: on an unclosed `${`, an empty or malformed reference, or an
            unknown root.
    """
    if len(text) > MAX_TEMPLATE_LENGTH:
        raise TemplateSyntaxError(f"template longer than {MAX_TEMPLATE_LENGTH} characters")
    parts: list[str | Reference] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise TemplateSyntaxError(f"unclosed '${{' at offset {i}")
            _flush(literal, parts)
            parts.append(parse_reference(text[i + 2 : end]))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    _flush(literal, parts)
    return Template(tuple(parts))


def _flush(literal: list[str], parts: list[str | Reference]) -> None:
    if literal:
        parts.append("".join(literal))
        literal.clear()


def parse_reference(source: str) -> Reference:
    """Parse the inside of `${...}`, e.g. `step.capture.output.items[0]`."""
    text = source.strip()
    match = _NAME.match(text)
    if match is None:
        raise TemplateSyntaxError(f"reference '${{{source}}}' must start with a name")
    root = match.group(0)
    if root not in ROOTS:
        raise TemplateSyntaxError(
            f"unknown reference root {root!r} in '${{{source}}}' (use {', '.join(sorted(ROOTS))})"
        )
    return Reference(root, tuple(_segments(text, match.end(), source)), source)


def _segments(text: str, pos: int, source: str) -> Iterator[str | int]:
    while pos < len(text):
        if text[pos] == "." and (m := _NAME.match(text, pos + 1)):
            yield m.group(0)
        elif m := _INDEX.match(text, pos):
            yield int(m.group(1))
        elif m := _QUOTED.match(text, pos):
            yield json.loads(f'"{m.group(1)}"')
        else:
            raise TemplateSyntaxError(f"malformed reference '${{{source}}}' at offset {pos}")
        pos = m.end()


def walk_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield `(json_path, string)` for every string (values, not keys) inside a JSON value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{path}[{index}]")


def has_templates(value: Any) -> bool:
    """Whether any string inside a JSON value holds a `${...}` (else `render` is a copy)."""
    return any("${" in text for _, text in walk_strings(value))


def references_in(value: Any) -> Iterator[tuple[str, Reference]]:
    """Yield `(json_path, reference)` for every reference in a JSON value.

    Raises:
        TemplateSyntaxError: for the first string that does not parse.
    """
    for path, text in walk_strings(value):
        for ref in parse_template(text).references():
            yield path, ref


def lookup(context: Mapping[str, Any], ref: Reference) -> Any:
    """The value a reference points at in `context`; None when any segment is missing."""
    current: Any = context.get(ref.root)
    for segment in ref.path:
        current = _step(current, segment)
        if current is None:
            return None
    return current


def _step(current: Any, segment: str | int) -> Any:
    if isinstance(segment, int) and isinstance(current, list):
        return current[segment] if segment < len(current) else None
    if isinstance(segment, str) and isinstance(current, Mapping):
        return current.get(segment)
    return None


def render(value: Any, context: Mapping[str, Any], *, escape_for_runner: bool = False) -> Any:
    """Resolve every reference in a JSON value against `context`.

    `${env.*}` and `${secrets.*}` stay as written (the step-runner resolves them).

    Args:
        value: a JSON value from the spec (strings anywhere inside are templates).
        context: `{"trigger": ..., "step": {id: {"output", "status", "error"}},
            "execution": {"id": ...}, "item": ..., "index": ...}`.
        escape_for_runner: escape `${` in substituted data and keep `$${` escapes, for
            requests the runner will pass through `resolve_runner_refs`.

    Raises:
        TemplateSyntaxError: when a string in `value` does not parse.
    """
    if isinstance(value, str):
        return _render_string(value, context, escape_for_runner)
    if isinstance(value, Mapping):
        return {
            k: render(v, context, escape_for_runner=escape_for_runner) for k, v in value.items()
        }
    if isinstance(value, list):
        return [render(v, context, escape_for_runner=escape_for_runner) for v in value]
    return value


def _render_string(text: str, context: Mapping[str, Any], escape: bool) -> Any:
    if "${" not in text:
        return text
    template = parse_template(text)
    whole = template.whole
    if whole is not None and whole.root not in RUNNER_ROOTS:
        found = lookup(context, whole)
        return escape_data(found) if escape else found
    return "".join(_render_part(part, context, escape) for part in template.parts)


def _render_part(part: str | Reference, context: Mapping[str, Any], escape: bool) -> str:
    if isinstance(part, str):
        return part.replace("${", "$${") if escape else part
    if part.root in RUNNER_ROOTS:
        return f"${{{part.source}}}"
    text = to_text(lookup(context, part))
    return text.replace("${", "$${") if escape else text


def to_text(value: Any) -> str:
    """How a referenced value reads when interpolated into a longer string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def escape_data(value: Any) -> Any:
    """Escape `${` as `$${` in every string of a JSON value (data must stay data)."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, Mapping):
        return {k: escape_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_data(v) for v in value]
    return value


def resolve_runner_refs(
    value: Any, env: Callable[[str], str | None], secrets: Callable[[str], str | None]
) -> Any:
    """The step-runner's pass: resolve `${env.X}`/`${secrets.X}` and unescape `$${`.

    Args:
        value: a request from StepReady (rendered with `escape_for_runner=True`).
        env: looks up an environment value by name (None when unknown).
        secrets: looks up a decrypted secret by name (None when unknown).
    """
    context = _RunnerContext(env, secrets)
    if isinstance(value, str):
        return context.string(value)
    if isinstance(value, Mapping):
        return {k: resolve_runner_refs(v, env, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_runner_refs(v, env, secrets) for v in value]
    return value


@dataclass(frozen=True)
class _RunnerContext:
    env: Callable[[str], str | None]
    secrets: Callable[[str], str | None]

    def string(self, text: str) -> str:
        if "${" not in text:
            return text
        return "".join(self._part(p) for p in parse_template(text).parts)

    def _part(self, part: str | Reference) -> str:
        if isinstance(part, str):
            return part
        name = str(part.path[0]) if part.path else ""
        source = self.env if part.root == "env" else self.secrets
        found = source(name) if part.root in RUNNER_ROOTS else None
        return "" if found is None else found
