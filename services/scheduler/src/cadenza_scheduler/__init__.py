"""Cadenza scheduler service."""
