"""The local Kafka + PostgreSQL stack that development, `make run` and tests use."""
