"""Rollouts: the state machine (machine.py), the canary analysis, conversion to and from
status.rollout, and the per-object driver.
"""
