"""Marks the approvals service directory as the root of its test package (unique conftest names)."""
