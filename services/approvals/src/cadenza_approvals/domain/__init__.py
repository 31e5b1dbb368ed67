"""Pure approval rules: no I/O, no clock."""
