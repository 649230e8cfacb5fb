"""Hedge's local development cluster (`hedge dev …`): control plane, kwok nodes, pod runner, demo.

Development tooling only; it ships in its own distribution (`hedge-dev`) and never in the image.
"""
