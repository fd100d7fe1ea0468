"""OpenAI's Responses API (``POST /v1/responses``), streamed as its SSE events: what Codex speaks
through a ``model_providers`` entry with ``wire_api = "responses"``.

The shell tool is found where the request offers it. Codex 0.171 with its default model sends
no top-level ``tools``: they arrive as an ``input`` item of type ``additional_tools`` holding a
namespace ``functions`` whose ``custom`` tool ``exec`` runs JavaScript that calls the nested
tools (``await tools.exec_command({cmd})``), so the shell call is a ``custom_tool_call`` of
``exec`` with that script. Tool sets of other models are served too: a function
``exec_command`` (``{"cmd": …}``) or ``shell`` (``{"command": [argv]}``), at the top level or in
a namespace. A request without any of them gets a text answer.

The usage is the API's: ``input_tokens`` (``input_tokens_details.cached_tokens`` of them cached:
a quarter, so that cached input is exercised) and ``output_tokens`` (a third of them reasoning)
from the server's figures, the same for every response.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.model_api.brain import Conversation, Shell, decide
from tests.support.model_api.server import Exchange, Request

# The code-mode tool of Codex and the nested tool its script calls.
CODE_TOOL = "exec"
NESTED_SHELL = "exec_command"
FUNCTION_SHELLS = ("exec_command", "shell")


def matches(request: Request) -> bool:
    return request.path.split("?")[0].rstrip("/") == "/v1/responses"


def _texts(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    parts = content if isinstance(content, list) else []
    return [str(p.get("text") or "") for p in parts if isinstance(p, dict) and "text" in p]


def conversation(body: dict[str, Any]) -> Conversation:
    """The user turns, the model's words and tool calls, and the tool results of ``input``
    (developer messages, reasoning and tool declarations are context, not conversation)."""
    conv = Conversation()
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    for item in items or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or "message"
        if kind == "message":
            text = "\n".join(_texts(item.get("content")))
            if item.get("role") == "user":
                conv.user(text)
            elif item.get("role") == "assistant":
                conv.model_text(text)
        elif kind.endswith("_call_output"):
            conv.result()
        elif kind.endswith("_call"):
            conv.call(str(item.get("name") or kind))
    return conv


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every tool the request offers, namespaces flattened."""
    found: list[dict[str, Any]] = []
    pending = list(body.get("tools") or [])
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            pending += item.get("tools") or []
    while pending:
        tool = pending.pop(0)
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            pending += tool.get("tools") or []
        else:
            found.append(tool)
    return found


def shell_call(body: dict[str, Any], command: str, call_id: str) -> dict[str, Any] | None:
    """The output item that runs ``command`` with the shell tool the request offers."""
    tools = _tools(body)
    for tool in tools:
        described = NESTED_SHELL in str(tool.get("description") or "")
        if tool.get("type") == "custom" and tool.get("name") == CODE_TOOL and described:
            script = (
                f"const result = await tools.{NESTED_SHELL}({{cmd: {json.dumps(command)}}});\n"
                "text(JSON.stringify(result));\n"
            )
            return {
                "type": "custom_tool_call",
                "call_id": call_id,
                "name": CODE_TOOL,
                "input": script,
            }
    for name in FUNCTION_SHELLS:
        if any(t.get("type") == "function" and t.get("name") == name for t in tools):
            args: dict[str, Any] = (
                {"cmd": command}
                if name == "exec_command"
                else {"command": ["bash", "-lc", command]}
            )
            return {
                "type": "function_call",
                "call_id": call_id,
                "name": name,
                "arguments": json.dumps(args),
            }
    return None


def answer(exchange: Exchange) -> None:
    server = exchange.server
    if exchange.request.method != "POST":  # codex's own provider tries a WebSocket first
        exchange.json(405, {"error": {"message": "only POST /v1/responses is served"}})
        return
    body = exchange.request.body
    reply = decide(conversation(body))
    item: dict[str, Any] | None = None
    if isinstance(reply, Shell):
        item = shell_call(body, reply.command, server.next_id("call_"))
    if item is None:
        text = reply.text if not isinstance(reply, Shell) else "I have no shell tool."
        item = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    item = {"id": server.next_id("item_"), **item, "status": "completed"}
    response_id = server.next_id("resp_")
    model = server.model or str(body.get("model") or "gpt-5-codex")
    cached = server.input_tokens // 4
    reasoning = server.output_tokens // 3
    usage = {
        "input_tokens": server.input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": server.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": server.input_tokens + server.output_tokens,
    }
    base = {"id": response_id, "object": "response", "created_at": int(time.time()), "model": model}
    started = {**item, "status": "in_progress"}
    if item["type"] == "message":
        started["content"] = []
    events: list[tuple[str | None, object]] = [
        (
            "response.created",
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "output": []},
            },
        ),
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": 0, "item": started},
        ),
    ]
    if item["type"] == "message":
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": item["content"][0]["text"],
                },
            )
        )
    events += [
        (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": 0, "item": item},
        ),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {**base, "status": "completed", "output": [item], "usage": usage},
            },
        ),
    ]
    for number, (_name, data) in enumerate(events):
        assert isinstance(data, dict)
        data["sequence_number"] = number
    exchange.sse(events)
