"""Local stand-ins for the LLM providers the gateway forwards to.

Import the stand-in classes from here; each lives in its own module.
"""

from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.base import AnswerPlan, StandIn, sse
from tests.standins.gemini_api import GeminiStandIn
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn
from tests.standins.recorder import ReceivedRequest
from tests.standins.tls import TestCA, shared_ca

__all__ = [
    "AnswerPlan",
    "AnthropicStandIn",
    "GeminiStandIn",
    "OllamaStandIn",
    "OpenAIStandIn",
    "ReceivedRequest",
    "StandIn",
    "TestCA",
    "shared_ca",
    "sse",
]
