"""Tests of the approvals service."""
