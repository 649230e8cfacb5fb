"""Tenants: ClientPolicy objects — their keys checked, their status written."""
