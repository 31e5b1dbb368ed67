"""Pure logic of the audit-sink: the read-model fold and the audit hash chain (no I/O, no clock)."""
