"""The group tests share the relay tests' namespace lab (one per module)."""
from tests.relay.conftest import lab  # noqa: F401 - a fixture, used by name
