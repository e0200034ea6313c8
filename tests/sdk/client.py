"""Drives the Tollgate gateway with the official `openai` Python SDK.

Usage: client.py SCENARIO. The client reads OPENAI_BASE_URL and OPENAI_API_KEY from the
environment. Each scenario prints one JSON line with what it observed and exits 0, also when
the SDK raised: the Rust tests (tests/sdk.rs, tests/responses.rs) make every assertion about
the gateway. Exit status 2 means a bad invocation.
"""

import json
import sys

import openai

MESSAGES = [{"role": "user", "content": "hi"}]


def client():
    # The gateway retries on its own: SDK retries would hide what it did.
    return openai.OpenAI(max_retries=0, timeout=20.0)


def exception(e):
    """An exception as JSON: class, its bases, and the API error fields when present."""
    return {
        "class": type(e).__name__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "message": getattr(e, "message", str(e)),
        "status": getattr(e, "status_code", None),
        "code": getattr(e, "code", None),
        "type": getattr(e, "type", None),
    }


HEADERS = (
    "x-tollgate-provider",
    "x-tollgate-key",
    "x-tollgate-attempts",
    "x-tollgate-dropped-tools",
)


def headers(raw):
    """The gateway's headers on a `with_raw_response` answer."""
    return {name: raw.headers.get(name) for name in HEADERS}


def chat(model="gpt-4o-mini"):
    raw = client().chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    completion = raw.parse()
    return {
        "content": completion.choices[0].message.content,
        "finish_reason": completion.choices[0].finish_reason,
        "model": completion.model,
        "usage": completion.usage.model_dump() if completion.usage else None,
        "headers": headers(raw),
    }


def stream_chunks(observed, model="gpt-4o-mini", **extra):
    """Iterates a streamed chat completion, recording headers and chunks as they arrive."""
    chunks = observed["chunks"] = []
    raw = client().chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, **extra
    )
    observed["headers"] = headers(raw)
    for chunk in raw.parse():
        chunks.append(
            {
                "content": chunk.choices[0].delta.content if chunk.choices else None,
                "finish_reason": chunk.choices[0].finish_reason if chunk.choices else None,
                "choices": len(chunk.choices),
                "model": chunk.model,
                "usage": chunk.usage.model_dump() if chunk.usage else None,
            }
        )


def stream(model="gpt-4o-mini", **extra):
    observed = {}
    stream_chunks(observed, model, **extra)
    observed["content"] = "".join(c["content"] or "" for c in observed["chunks"])
    observed["finish_reasons"] = [
        c["finish_reason"] for c in observed["chunks"] if c["finish_reason"]
    ]
    return observed


def stream_catching():
    """A stream whose failure is part of the observation, with the chunks seen before it."""
    observed = {"exception": None}
    try:
        stream_chunks(observed)
    except Exception as e:  # noqa: BLE001 - the class is the observation
        observed["exception"] = exception(e)
    return observed


def embeddings():
    result = client().embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    return {
        "count": len(result.data),
        "indexes": [d.index for d in result.data],
        "embeddings": [list(d.embedding) for d in result.data],
    }


def unknown_model():
    try:
        client().chat.completions.create(model="gpt-9", messages=MESSAGES)
    except Exception as e:  # noqa: BLE001 - the class is the observation
        return {"exception": exception(e)}
    return {"exception": None}


def pool():
    c = client()
    results = []
    for _ in range(20):
        try:
            completion = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            results.append({"ok": True, "content": completion.choices[0].message.content})
        except Exception as e:  # noqa: BLE001 - a failure is reported, not raised
            results.append({"ok": False, "exception": exception(e)})
    return {"results": results}


# ---- the fallback chain: model "smart" served by whichever provider is up ----------------------

CHAIN_MODEL = "smart"
INCLUDE_USAGE = {"include_usage": True}
TOOL_MESSAGES = [{"role": "user", "content": "please use a tool"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def parsed(arguments):
    """A tool call's arguments as JSON, or what could not be parsed."""
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return {"unparsable": arguments}


def tools():
    """A tool call, then its result sent back the way an application would."""
    c = client()
    raw = c.chat.completions.with_raw_response.create(
        model=CHAIN_MODEL, messages=TOOL_MESSAGES, tools=TOOLS
    )
    completion = raw.parse()
    choice = completion.choices[0]
    calls = [
        {"id": t.id, "type": t.type, "name": t.function.name, "arguments": t.function.arguments}
        for t in choice.message.tool_calls or []
    ]
    observed = {
        "headers": headers(raw),
        "model": completion.model,
        "finish_reason": choice.finish_reason,
        "content": choice.message.content,
        "tool_calls": calls,
        "arguments": [parsed(t["arguments"]) for t in calls],
    }
    if not calls:
        return observed
    call = calls[0]
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    raw = c.chat.completions.with_raw_response.create(
        model=CHAIN_MODEL, messages=TOOL_MESSAGES + [assistant, result], tools=TOOLS
    )
    answer = raw.parse()
    observed["follow_up"] = {
        "headers": headers(raw),
        "content": answer.choices[0].message.content,
        "finish_reason": answer.choices[0].finish_reason,
        "tool_calls": len(answer.choices[0].message.tool_calls or []),
    }
    return observed


def tools_stream():
    """A streamed tool call, its pieces accumulated by index as SDK users do."""
    raw = client().chat.completions.with_raw_response.create(
        model=CHAIN_MODEL, messages=TOOL_MESSAGES, tools=TOOLS, stream=True
    )
    calls = {}
    finish_reasons = []
    chunks = 0
    for chunk in raw.parse():
        chunks += 1
        for choice in chunk.choices:
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    ordered = [calls[i] for i in sorted(calls)]
    return {
        "headers": headers(raw),
        "chunks": chunks,
        "indexes": sorted(calls),
        "tool_calls": ordered,
        "arguments": [parsed(t["arguments"]) for t in ordered],
        "finish_reasons": finish_reasons,
    }


# ---- the Responses API ------------------------------------------------------------------------

RESPONSES_MODEL = "gpt-4o-mini"
RESPONSES_INPUT = "hi"
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# What `responses_usage` sends as `prompt_cache_key` on both turns: one session.
SESSION = "tollgate-e2e-session"


def dump(model):
    """A pydantic model (usage, error) as JSON, or None."""
    return model.model_dump() if model is not None else None


def summary(response):
    """What a `response` object says: id, status, text, error and usage."""
    return {
        "id": response.id,
        "status": response.status,
        "model": response.model,
        "text": response.output_text,
        "error": dump(response.error),
        "usage": dump(response.usage),
    }


def event_record(event):
    """One stream event: its type, and what matters for it (a delta, an error, a terminal)."""
    record = {"type": event.type}
    if event.type == "response.output_text.delta":
        record["delta"] = event.delta
    elif event.type == "error":
        record["code"] = getattr(event, "code", None)
        record["message"] = getattr(event, "message", None)
    elif event.type in TERMINAL or event.type == "response.created":
        record["response"] = summary(event.response)
    return record


def stream_summary(observed):
    """Types, text and terminal event of the events recorded in `observed["events"]`."""
    events = observed.get("events", [])
    observed["types"] = [e["type"] for e in events]
    observed["text"] = "".join(e.get("delta", "") for e in events)
    terminals = [e for e in events if e["type"] in TERMINAL]
    observed["terminal"] = terminals[-1] if terminals else None
    return observed


def responses_plain(c=None, **extra):
    raw = (c or client()).responses.with_raw_response.create(
        model=RESPONSES_MODEL, input=RESPONSES_INPUT, **extra
    )
    observed = summary(raw.parse())
    observed["headers"] = headers(raw)
    return observed


def responses_stream_events(observed, c=None, **extra):
    """Iterates a streamed response with `create(stream=True)`, recording every event."""
    events = observed["events"] = []
    raw = (c or client()).responses.with_raw_response.create(
        model=RESPONSES_MODEL, input=RESPONSES_INPUT, stream=True, **extra
    )
    observed["headers"] = headers(raw)
    for event in raw.parse():
        events.append(event_record(event))


def responses_stream(c=None, **extra):
    """A streamed response; a failure (raised by the SDK) is part of the observation."""
    observed = {"exception": None}
    try:
        responses_stream_events(observed, c, **extra)
    except Exception as e:  # noqa: BLE001 - the class is the observation
        observed["exception"] = exception(e)
    return stream_summary(observed)


def responses_stream_manager():
    """`client.responses.stream(...)` as a context manager, then `get_final_response()`."""
    observed = {"exception": None, "events": [], "final": None}
    try:
        with client().responses.stream(model=RESPONSES_MODEL, input=RESPONSES_INPUT) as stream:
            raw = getattr(stream, "_response", None)
            if raw is not None:
                observed["headers"] = {name: raw.headers.get(name) for name in HEADERS}
            for event in stream:
                observed["events"].append(event_record(event))
            observed["final"] = summary(stream.get_final_response())
    except Exception as e:  # noqa: BLE001 - the class is the observation
        observed["exception"] = exception(e)
    return stream_summary(observed)


def responses_usage():
    """One session's two turns: plain, then streamed, with the same `prompt_cache_key`."""
    c = client()
    plain = responses_plain(c, prompt_cache_key=SESSION)
    streamed = responses_stream(c, prompt_cache_key=SESSION)
    return {"plain": plain, "stream": streamed}


def responses_sticky():
    """Six turns of one conversation by `prompt_cache_key`, six by a `session-id` header, and
    six of no session: the key that served each."""
    c = client()
    keys = {"cache_key": [], "session_header": [], "none": []}
    for _ in range(6):
        keys["cache_key"].append(
            responses_plain(c, prompt_cache_key="sdk-conversation-1")["headers"]["x-tollgate-key"]
        )
        keys["session_header"].append(
            responses_plain(c, extra_headers={"session-id": "sdk-session-2"})["headers"][
                "x-tollgate-key"
            ]
        )
        keys["none"].append(responses_plain(c)["headers"]["x-tollgate-key"])
    return {"keys": keys}


# A Responses turn as Codex makes one, for a model whose working target translates it: a
# function tool and a hosted one (which the translation leaves out), the mock's tool marker.
TRANSLATED_TOOLS = [
    {
        "type": "function",
        "name": "exec_command",
        "description": "Runs a shell command.",
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string"}},
            "required": ["cmd"],
        },
    },
    {"type": "web_search"},
]
TRANSLATED_INPUT = [
    {"role": "developer", "content": "Answer briefly."},
    {"role": "user", "content": [{"type": "input_text", "text": "run the check TOLLGATE_TOOL"}]},
]


def translated_turn(c, model, input, stream):
    """One turn: what came back (the final response, as the SDK parsed it), the gateway's
    headers, and for a stream every event's type and sequence number."""
    raw = c.responses.with_raw_response.create(
        model=model,
        instructions="You are a test.",
        input=input,
        tools=TRANSLATED_TOOLS,
        store=False,
        stream=stream,
    )
    observed = {"headers": headers(raw), "events": []}
    if not stream:
        response = raw.parse()
    else:
        response = None
        for event in raw.parse():
            observed["events"].append(
                {"type": event.type, "sequence_number": event.sequence_number}
            )
            if event.type in TERMINAL:
                response = event.response
    observed["response"] = response.model_dump(exclude_none=True) if response else None
    observed["text"] = response.output_text if response else None
    return observed, response


def translated(model, stream):
    """A tool call, then its output sent back as the next turn's `function_call_output`."""
    c = client()
    first, response = translated_turn(c, model, TRANSLATED_INPUT, stream)
    observed = {"exception": None, "first": first}
    calls = [item for item in (response.output if response else []) if item.type == "function_call"]
    if not calls:
        return observed
    call = calls[0]
    follow = TRANSLATED_INPUT + [
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "tollgate-tool-ok"},
    ]
    observed["second"], _ = translated_turn(c, model, follow, stream)
    return observed


SCENARIOS = {
    "chat": chat,
    "stream": lambda: stream(stream_options=INCLUDE_USAGE),
    "stream_catching": stream_catching,
    "embeddings": embeddings,
    "unknown_model": unknown_model,
    "pool": pool,
    "chain_chat": lambda: chat(CHAIN_MODEL),
    "chain_stream": lambda: stream(CHAIN_MODEL, stream_options=INCLUDE_USAGE),
    "chain_tools": tools,
    "chain_tools_stream": tools_stream,
    "responses": responses_plain,
    "responses_stream": responses_stream,
    "responses_stream_manager": responses_stream_manager,
    "responses_usage": responses_usage,
    "responses_sticky": responses_sticky,
    "translated_anthropic": lambda: translated(CHAIN_MODEL, False),
    "translated_anthropic_stream": lambda: translated(CHAIN_MODEL, True),
    "translated_chat": lambda: translated("local", False),
    "translated_chat_stream": lambda: translated("local", True),
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print(f"usage: client.py {{{'|'.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    observed = {"scenario": sys.argv[1], "sdk_version": openai.__version__}
    try:
        observed.update(SCENARIOS[sys.argv[1]]())
    except Exception as e:  # noqa: BLE001 - an unexpected failure is an observation too
        observed["exception"] = exception(e)
    print(json.dumps(observed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
