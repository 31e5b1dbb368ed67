"""Cadenza approvals service."""
