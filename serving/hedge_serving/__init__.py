"""Hedge's data plane: the OpenAI-compatible gateway and the vLLM engine simulator."""

__version__ = "0.1.0"
