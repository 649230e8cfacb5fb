"""Hedge's control plane: the kopf operator that turns ModelDeployments into vLLM pods."""

__version__ = "0.1.0"
