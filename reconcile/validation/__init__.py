"""The seed's validation API: ``mk_validator``, ``presets``, ``validators``.

Its names load on first use: reading models.toml checks validator names against
``builtin`` alone, and `lock --check` must not pay for the runner (subprocess & co).
"""

from __future__ import annotations

from typing import Any


class _Validators:
    """``validators.noPickleFiles`` or ``validators.maxSize("10G")``, as in the seed."""

    def __getattr__(self, name: str) -> Any:
        from .builtin import BUILTINS
        from .runner import parse_ref

        if name not in BUILTINS:
            raise AttributeError(name)
        _check, _desc, takes_arg = BUILTINS[name]
        if takes_arg:
            return lambda arg: parse_ref({name: arg}, {})
        return parse_ref(name, {})


validators = _Validators()

__all__ = ["Validator", "mk_validator", "presets", "validators"]


def __getattr__(name: str) -> Any:
    if name in ("Validator", "mk_validator", "parse_ref", "presets"):
        from . import runner

        return runner.PRESETS if name == "presets" else getattr(runner, name)
    raise AttributeError(name)
