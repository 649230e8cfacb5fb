"""The data plane as the operator reads it: signal parsing (signals.py), the scraper, and where the
gateways and engines are found (discovery.py).
"""
