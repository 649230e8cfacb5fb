"""Autoscaling: the pure policy (policy.py), the per-model step (step.py) and the tick's I/O
(loop.py).
"""
