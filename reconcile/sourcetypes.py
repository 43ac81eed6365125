"""The source types, as reading models.toml asks about them, without importing them.

config.py checks each ``source.<type>`` table against that source's own options
(``OPTIONS``, ``check_options``, ``shorthand`` …), which live with the source. Were
config to import the registry, the model of models.toml would import every source,
and through them the network code, which reads that model: one knot of half the
package. So config asks this module, and the package's ``__init__`` (which Python
runs before any of its modules) says once where the registry is; it is imported on
first use, so `import reconcile` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class SourceTypes(Protocol):
    """What the reader of models.toml needs of the registry (``sources.registry``)."""

    def get(self, name: str) -> Any | None:
        """The source class for a type name; None for an unknown or planned type."""

    def names(self) -> list[str]:
        """Types this version can use."""

    def planned(self) -> list[str]:
        """Types declared but not shipped in this version."""


_loader: Callable[[], SourceTypes] | None = None


def provide(loader: Callable[[], SourceTypes]) -> None:
    """Say where the registry is (called by ``reconcile/__init__.py``)."""
    global _loader
    _loader = loader


def source_types() -> SourceTypes:
    """The registry of source types."""
    if _loader is None:  # pragma: no cover - reconcile/__init__.py always provides it
        raise RuntimeError("reconcile.sourcetypes: no registry provided")
    return _loader()
