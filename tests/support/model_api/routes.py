"""Which provider module answers a request: the first whose ``matches`` accepts its path."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.model_api.server import Request, Route

_MODULES: list[tuple[Callable[[Request], bool], Route]] = []


def register(matches: Callable[[Request], bool], route: Route) -> None:
    _MODULES.append((matches, route))


def find(request: Request) -> Route | None:
    _load()
    return next((route for matches, route in _MODULES if matches(request)), None)


def _load() -> None:
    if _MODULES:
        return
    import importlib

    for name in ("anthropic", "openai_responses", "openai_chat", "gemini"):
        try:
            module = importlib.import_module(f"tests.support.model_api.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tests.support.model_api.{name}":
                raise
            continue  # a provider not written yet
        register(module.matches, module.answer)
