"""Subscriptions, fetched by the runtime: at start, then every refresh; the last good copy of
each kept on disk (0600) so a gateway restarts with no network; their nodes given to the
groups whose filter selects them (docs/subscriptions.md)."""
from __future__ import annotations

from .manager import SubscriptionManager, subscription_dir

__all__ = ["SubscriptionManager", "subscription_dir"]
