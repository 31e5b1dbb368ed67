"""Cadenza audit-sink service."""
