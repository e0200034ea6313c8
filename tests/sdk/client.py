"""Drives the Tollgate gateway with the official `openai` Python SDK.

Usage: client.py SCENARIO. The client reads OPENAI_BASE_URL and OPENAI_API_KEY from the
environment. Each scenario prints one JSON line with what it observed and exits 0, also when
the SDK raised: the Rust test (tests/sdk.rs) makes every assertion about the gateway. Exit
status 2 means a bad invocation.
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


def chat():
    raw = client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    completion = raw.parse()
    return {
        "content": completion.choices[0].message.content,
        "model": completion.model,
        "usage": completion.usage.model_dump() if completion.usage else None,
        "headers": {
            name: raw.headers.get(name)
            for name in ("x-tollgate-provider", "x-tollgate-key", "x-tollgate-attempts")
        },
    }


def stream_chunks(observed, **extra):
    """Iterates a streamed chat completion, recording chunks as they arrive."""
    chunks = observed["chunks"] = []
    stream = client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra
    )
    for chunk in stream:
        chunks.append(
            {
                "content": chunk.choices[0].delta.content if chunk.choices else None,
                "finish_reason": chunk.choices[0].finish_reason if chunk.choices else None,
                "choices": len(chunk.choices),
                "usage": chunk.usage.model_dump() if chunk.usage else None,
            }
        )


def stream():
    observed = {}
    stream_chunks(observed, stream_options={"include_usage": True})
    observed["content"] = "".join(c["content"] or "" for c in observed["chunks"])
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


SCENARIOS = {
    "chat": chat,
    "stream": stream,
    "stream_catching": stream_catching,
    "embeddings": embeddings,
    "unknown_model": unknown_model,
    "pool": pool,
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
