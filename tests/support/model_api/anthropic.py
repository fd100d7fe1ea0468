"""Anthropic's Messages API (``POST /v1/messages``), streamed as its SSE events or as one JSON
message: what Claude Code speaks with ``ANTHROPIC_BASE_URL``.

The usage is the API's: ``message_start`` carries the input and one output token, the closing
``message_delta`` the whole output count, which is what stream-json's ``assistant`` events miss.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.model_api.brain import Conversation, Shell, decide
from tests.support.model_api.server import Exchange, Request

SHELL_TOOL = "Bash"


def matches(request: Request) -> bool:
    return request.path.split("?")[0].rstrip("/") in ("/v1/messages", "/v1/messages/count_tokens")


def conversation(body: dict[str, Any]) -> Conversation:
    conv = Conversation()
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        texts = []
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_result":
                conv.result()
            elif kind == "tool_use":
                conv.call(str(block.get("name")))
            elif kind == "text":
                texts.append(str(block.get("text") or ""))
        if message.get("role") == "user" and texts:
            conv.user("\n".join(texts))
        elif texts:
            conv.model_text("\n".join(texts))
    return conv


def answer(exchange: Exchange) -> None:
    body = exchange.request.body
    server = exchange.server
    if exchange.request.path.startswith("/v1/messages/count_tokens"):
        exchange.json(200, {"input_tokens": server.input_tokens})
        return
    tools = {t.get("name") for t in body.get("tools") or []}
    reply = decide(conversation(body)) if SHELL_TOOL in tools else None
    if isinstance(reply, Shell):
        call_id = server.next_id("toolu_")
        arguments = {"command": reply.command, "description": "Write and commit the files"}
        block: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": SHELL_TOOL}
        content = [{**block, "input": arguments}]
        stop = "tool_use"
    else:
        text = reply.text if reply is not None else "OK"
        content = [{"type": "text", "text": text}]
        stop = "end_turn"
    model = server.model or str(body.get("model") or "claude-sonnet-4-5")
    message_id = server.next_id("msg_")
    usage_in = {
        "input_tokens": server.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    if not body.get("stream"):
        exchange.json(
            200,
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {**usage_in, "output_tokens": server.output_tokens},
            },
        )
        return
    events: list[tuple[str | None, object]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage_in, "output_tokens": 1},
                },
            },
        )
    ]
    for index, item in enumerate(content):
        if item["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            delta: dict[str, Any] = {"type": "text_delta", "text": item["text"]}
        else:
            start = {"type": "tool_use", "id": item["id"], "name": item["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(item["input"])}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": server.output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    exchange.sse(events)
