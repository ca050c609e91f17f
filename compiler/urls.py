"""The compiler's name for `dae_py.contract.urls` (the runtime masks subscription URLs with the
same rules, so they live in the contract)."""
from __future__ import annotations

from dae_py.contract.urls import MASK, Url, mask_secrets, mask_with_column, split_url

__all__ = ["MASK", "Url", "mask_secrets", "mask_with_column", "split_url"]
