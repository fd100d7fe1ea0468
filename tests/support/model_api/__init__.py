"""A scripted model API on 127.0.0.1 for the real agent CLIs: the agents run unchanged, only the
model is played by the tests.

One HTTP server speaks each provider's wire format (``anthropic``: Messages SSE; ``openai_responses``:
the Responses API SSE; ``openai_chat``: Chat Completions; ``gemini``: streamGenerateContent SSE).
What the model says is decided by ``brain.decide`` from the conversation the agent sends, the
same for every provider: a user message holding ``@write NAME`` lines gets one shell tool call
that writes those files and commits them; the tool's result gets a short final answer. A failing
check whose output says ``@write fixed.txt`` therefore steers the next iteration, as a failing
test steers a real model.
"""

from tests.support.model_api.brain import Conversation, Shell, Text, decide
from tests.support.model_api.server import ModelServer

__all__ = ["Conversation", "ModelServer", "Shell", "Text", "decide"]
