"""Cadenza trigger-api service."""
