"""Root conftest: the real-server fixtures (`kafka_bootstrap`, `database_url`, ...)."""

pytest_plugins = ["cadenza_devstack.pytest_plugin"]
