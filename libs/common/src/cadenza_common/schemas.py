"""Generate JSON Schemas and an AsyncAPI document from the event models (never by hand).

`python -m cadenza_common.schemas [DIR]` (or `make schemas`) writes `libs/common/schemas/`;
a test fails when the checked-in files differ from what the models generate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from cadenza_common.events import EVENT_TYPES, TOPIC_EVENTS

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "schemas"


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, one per event type."""
    return {
        f"{cls.CE_TYPE}.json": cls.model_json_schema(mode="serialization") for cls in EVENT_TYPES
    }


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel per topic, one message per event type."""
    messages = {
        cls.__name__: {
            "name": cls.CE_TYPE,
            "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"./{cls.CE_TYPE}.json"},
        }
        for cls in EVENT_TYPES
    }
    channels = {
        topic.name.lower(): {
            "address": "{prefix}" + topic.value,
            "parameters": {"prefix": {"default": "cadenza."}},
            "messages": {
                cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in classes
            },
        }
        for topic, classes in TOPIC_EVENTS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Cadenza events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 in Kafka binary mode; the value is the payload.",
        },
        "channels": channels,
        "components": {"messages": messages},
    }


def render() -> dict[str, bytes]:
    """Every generated file's name and bytes (stable: sorted keys, indented)."""
    files = {name: schema for name, schema in event_schemas().items()}
    files["asyncapi.json"] = asyncapi()
    option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    return {name: orjson.dumps(doc, option=option) for name, doc in files.items()}


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write the generated files, removing stale ones; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    paths = []
    for name, content in rendered.items():
        path = directory / name
        path.write_bytes(content)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    print(f"wrote {len(write(target))} files to {target}")
