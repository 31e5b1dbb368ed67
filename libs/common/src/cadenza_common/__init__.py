"""Shared models and helpers for every Cadenza service."""
