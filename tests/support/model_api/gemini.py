"""The Gemini API (``/v1beta/models/<model>:<method>``): what Gemini CLI speaks with an API key and
``GOOGLE_GEMINI_BASE_URL``.

``streamGenerateContent?alt=sse`` is the agent's turn: SSE ``data:`` lines, each a
GenerateContentResponse. ``generateContent`` is the CLI's side calls (a JSON answer to a schema);
``countTokens`` and ``embedContent`` get plausible figures.
"""

from __future__ import annotations

import re
from typing import Any

from tests.support.model_api.brain import Conversation, Shell, decide
from tests.support.model_api.server import Exchange, Request

SHELL_TOOL = "run_shell_command"
PATH = re.compile(r"^/v1(?:beta|alpha)?/models/([^/:?]+):([A-Za-z]+)")


def matches(request: Request) -> bool:
    return PATH.match(request.path) is not None


def conversation(body: dict[str, Any]) -> Conversation:
    conv = Conversation()
    for content in body.get("contents") or []:
        texts = []
        for part in content.get("parts") or []:
            if "functionResponse" in part:
                conv.result(str(part["functionResponse"].get("response") or ""))
            elif "functionCall" in part:
                conv.call(str(part["functionCall"].get("name") or ""))
            elif isinstance(part.get("text"), str) and not part.get("thought"):
                texts.append(part["text"])
        if texts and content.get("role") == "model":
            conv.model_text("\n".join(texts))
        elif texts:
            conv.user("\n".join(texts))
    return conv


def tool_names(body: dict[str, Any]) -> set[str]:
    return {
        str(declaration.get("name"))
        for tool in body.get("tools") or []
        for declaration in tool.get("functionDeclarations") or []
    }


def usage(exchange: Exchange) -> dict[str, int]:
    server = exchange.server
    return {
        "promptTokenCount": server.input_tokens,
        "candidatesTokenCount": server.output_tokens,
        "totalTokenCount": server.input_tokens + server.output_tokens,
    }


def schema_value(schema: dict[str, Any]) -> object:
    """A value of the JSON schema a side call asks for (a next-speaker check, a classifier):
    the first enum choice, an object of its required properties, and so on."""
    kind = str(schema.get("type") or "object").lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: schema_value(properties[name]) for name in properties}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)  # a classifier's score runs from 1
    if kind == "boolean":
        return False
    return "user"


def answer(exchange: Exchange) -> None:
    request = exchange.request
    match = PATH.match(request.path)
    assert match is not None
    model, method = match.groups()
    body = request.body
    if method == "countTokens":
        exchange.json(200, {"totalTokens": exchange.server.input_tokens})
        return
    if method == "embedContent":
        exchange.json(200, {"embedding": {"values": [0.0] * 8}})
        return
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if method == "generateContent" and schema:
        import json

        text = json.dumps(schema_value(schema))
        parts: list[dict[str, Any]] = [{"text": text}]
    else:
        reply = decide(conversation(body)) if SHELL_TOOL in tool_names(body) else None
        if isinstance(reply, Shell):
            args = {"command": reply.command, "description": "Write and commit the files"}
            parts = [{"functionCall": {"name": SHELL_TOOL, "args": args}}]
        else:
            parts = [{"text": reply.text if reply is not None else "OK"}]
    response = {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": usage(exchange),
        "modelVersion": exchange.server.model or model,
        "responseId": exchange.server.next_id("resp_"),
    }
    if method == "streamGenerateContent":
        exchange.sse([(None, response)])
    else:
        exchange.json(200, response)
