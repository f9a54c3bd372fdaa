"""Shared settings, contracts and local-service plumbing for AdStream."""
