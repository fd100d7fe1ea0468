"""OpenAI's Chat Completions API (``POST /v1/chat/completions``), as one JSON completion or
streamed as ``chat.completion.chunk`` SSE events: what aider speaks (through litellm) for a model
``openai/<name>`` with ``OPENAI_API_BASE``.

Aider sends no tools: it edits files by writing them out in its edit format. For a model it
knows nothing about that is *whole*: the reply names each file on a line of its own, then gives
its whole content in a fence, and aider writes and commits it. So the brain's shell call becomes
such a file listing here, and a file listing in an earlier assistant message counts as the call
made. Aider's other request, the commit message for its auto-commit (its weak model, told so in
the system message), gets a one-line message naming the files of the diff it was given.

The usage is the figures the server is set to report; with ``stream_options.include_usage`` it
comes in a last chunk without choices, as the API sends it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.support.model_api.brain import Conversation, Shell, decide, file_content
from tests.support.model_api.server import Exchange, Request

FENCE = "```"
# A file listing of the whole edit format: a file name alone on its line, then a fence.
_LISTING = re.compile(r"^[^\s`][^\n]*\n```", re.MULTILINE)
# aider's commit-message system prompt (aider/prompts.py, commit_system)
_COMMIT_REQUEST = "one-line Git commit messages"
_DIFF_FILE = re.compile(r"^\+\+\+ b/(.+)$", re.MULTILINE)


def matches(request: Request) -> bool:
    return request.path.split("?")[0].rstrip("/") in ("/v1/chat/completions", "/chat/completions")


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def conversation(body: dict[str, Any]) -> Conversation:
    conv = Conversation()
    for message in body.get("messages") or []:
        role = message.get("role")
        text = _text(message.get("content"))
        if role == "user":
            conv.user(text)
        elif role == "assistant":
            for call in message.get("tool_calls") or []:
                conv.call(str((call.get("function") or {}).get("name")))
            if _LISTING.search(text):
                conv.call("edit")  # aider's edit, the equivalent of a shell call
            elif text:
                conv.model_text(text)
        elif role == "tool":
            conv.result(text)
    return conv


def whole_edit(reply: Shell) -> str:
    """The brain's shell call as aider's *whole* edit format: each file listed in full."""
    listings = [f"{name}\n{FENCE}\n{file_content(name)}{FENCE}\n" for name in reply.files]
    return f"Writing {', '.join(reply.files)}.\n\n" + "\n".join(listings)


def commit_message(body: dict[str, Any]) -> str | None:
    """The reply to aider's commit-message request, or None when ``body`` is not one."""
    messages = body.get("messages") or []
    system = " ".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    if _COMMIT_REQUEST not in system:
        return None
    diffs = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
    names = list(dict.fromkeys(_DIFF_FILE.findall(diffs)))
    return f"feat: Add {', '.join(names) or 'files'}"


def answer(exchange: Exchange) -> None:
    body = exchange.request.body
    server = exchange.server
    text = commit_message(body)
    if text is None:
        reply = decide(conversation(body))
        text = whole_edit(reply) if isinstance(reply, Shell) else reply.text
    model = server.model or str(body.get("model") or "gpt-4o")
    completion_id = server.next_id("chatcmpl-")
    created = int(time.time())
    usage = {
        "prompt_tokens": server.input_tokens,
        "completion_tokens": server.output_tokens,
        "total_tokens": server.input_tokens + server.output_tokens,
    }
    if not body.get("stream"):
        exchange.json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )
        return

    def chunk(choices: list[dict[str, Any]], **extra: object) -> tuple[None, object]:
        event = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return (None, event)

    events: list[tuple[str | None, object]] = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(chunk([], usage=usage))
    events.append((None, "[DONE]"))
    exchange.sse(events)
