"""Cadenza's demo sibling service (identity capture, AML screening, CRM) for `make run`."""
