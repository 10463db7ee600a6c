"""Whether the optional ``[litert]`` extra is installed, checked without importing it.

Kept apart from :mod:`compress.litert_export` (which imports the export machinery: torch, the
traceable views, transformers' model classes) so that the config rules of ``distill validate``
check it in milliseconds.
"""

from __future__ import annotations

import importlib.util

from core.errors import ConfigError

PACKAGES = ("litert_torch", "ai_edge_litert")
"""The modules of the ``[litert]`` extra: the converter and the runtime."""
EXTRA_MISSING = ("LiteRT needs the optional extra: pip install 'distill[litert]' (it pins pydantic 2.11; use a "
                 "separate environment)")


def litert_installed() -> bool:
    """Whether both modules of :data:`PACKAGES` can be imported (found, not imported: milliseconds)."""
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES)


def require_litert() -> None:
    """Raise ConfigError(:data:`EXTRA_MISSING`) unless the ``[litert]`` extra is installed."""
    if not litert_installed():
        raise ConfigError(EXTRA_MISSING)
