"""Hedge's control plane: the ModelDeployment API, the kopf operator and the dev cluster."""

__version__ = "0.1.0"
