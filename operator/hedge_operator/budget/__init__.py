"""The fallback budget: the pure windows (windows.py) and the tick's I/O (loop.py)."""
