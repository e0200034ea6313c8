"""Drives the Tollgate gateway's Messages API (`/v1/messages`) with the official `anthropic`
Python SDK.

Usage: anthropic_client.py SCENARIO MODEL. The client reads ANTHROPIC_BASE_URL (the gateway's
root, no /v1) and ANTHROPIC_API_KEY (the client's gateway key) from the environment. Each
scenario prints one JSON line with what it observed and exits 0, also when the SDK raised: the
Rust tests (tests/messages.rs) make every assertion about the gateway. Exit status 2 means a
bad invocation.
"""

import json
import sys

import anthropic

HEADERS = (
    "x-tollgate-provider",
    "x-tollgate-key",
    "x-tollgate-attempts",
    "x-tollgate-dropped-tools",
    "retry-after",
    "content-type",
)

TOOLS = [
    {
        "name": "Bash",
        "description": "Run a shell command",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
            "required": ["command"],
        },
        "cache_control": {"type": "ephemeral"},
    },
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
]

SYSTEM = [
    {"type": "text", "text": "You are a test."},
    {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}},
]


def client():
    # The gateway retries on its own: SDK retries would hide what it did.
    return anthropic.Anthropic(max_retries=0, timeout=20.0)


def exception(e):
    """An exception as JSON: class, its bases, and the API error fields when present."""
    body = getattr(e, "body", None)
    return {
        "class": type(e).__name__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "message": getattr(e, "message", str(e)),
        "status": getattr(e, "status_code", None),
        "body": body if isinstance(body, (dict, list, str)) or body is None else str(body),
    }


def headers(raw):
    return {name: raw.headers.get(name) for name in HEADERS}


def message_record(message):
    return message.model_dump(exclude_none=True) if message else None


def plain(model, **extra):
    raw = client().messages.with_raw_response.create(
        model=model,
        max_tokens=256,
        messages=extra.pop("messages", [{"role": "user", "content": "hi"}]),
        **extra,
    )
    message = raw.parse()
    return {"headers": headers(raw), "message": message_record(message)}


def streamed(model, **extra):
    """A streamed answer: every event's type (and index), the text, the final message."""
    observed = {"events": [], "text": ""}
    with client().messages.stream(
        model=model,
        max_tokens=256,
        messages=extra.pop("messages", [{"role": "user", "content": "hi"}]),
        **extra,
    ) as stream:
        observed["headers"] = headers(stream.response)
        try:
            for event in stream:
                record = {"type": event.type}
                if hasattr(event, "index"):
                    record["index"] = event.index
                observed["events"].append(record)
                if event.type == "text":
                    observed["text"] += event.text
            observed["message"] = message_record(stream.get_final_message())
        except Exception as e:  # noqa: BLE001 - a failure after the first event is an observation
            observed["exception"] = exception(e)
    return observed


def round_trip(model, stream):
    """A tool call, then its result sent back: what each turn gave."""
    turn = streamed if stream else plain
    prompt = [{"role": "user", "content": [{"type": "text", "text": "run the check TOLLGATE_TOOL"}]}]
    first = turn(model, system=SYSTEM, tools=TOOLS, messages=list(prompt))
    observed = {"first": first}
    message = first.get("message")
    calls = [b for b in (message or {}).get("content", []) if b.get("type") == "tool_use"]
    if not calls:
        return observed
    follow = prompt + [
        {"role": "assistant", "content": message["content"]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "tollgate-tool-ok"}
            ],
        },
    ]
    observed["second"] = turn(model, system=SYSTEM, tools=TOOLS, messages=follow)
    return observed


def count(model):
    result = client().messages.count_tokens(
        model=model, system=SYSTEM, messages=[{"role": "user", "content": "count these words"}]
    )
    return {"input_tokens": result.input_tokens}


SCENARIOS = {
    "plain": lambda model: plain(model),
    "stream": lambda model: streamed(model),
    "tools": lambda model: round_trip(model, False),
    "tools_stream": lambda model: round_trip(model, True),
    "count": count,
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SCENARIOS:
        print(f"usage: anthropic_client.py {{{'|'.join(SCENARIOS)}}} MODEL", file=sys.stderr)
        return 2
    observed = {"scenario": sys.argv[1], "sdk_version": anthropic.__version__}
    try:
        observed.update(SCENARIOS[sys.argv[1]](sys.argv[2]))
    except Exception as e:  # noqa: BLE001 - an unexpected failure is an observation too
        observed["exception"] = exception(e)
    print(json.dumps(observed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
