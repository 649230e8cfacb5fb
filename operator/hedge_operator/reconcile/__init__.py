"""The reconcile: the sequencer (reconciler.py), status computation (status.py) and the one status
writer (writer.py).
"""
