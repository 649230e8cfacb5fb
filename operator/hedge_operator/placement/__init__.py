"""Accelerator profiles and the pod settings that place engine pods on a platform's GPU nodes."""
