"""Cadenza step-runner service."""
