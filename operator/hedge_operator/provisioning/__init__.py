"""Provisioning: spec -> children (builders, plan), what is observed, validation, name claims; the
writes (executor) and the Secret-key look-ups (secrets).
"""
