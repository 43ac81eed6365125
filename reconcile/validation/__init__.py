"""The seed's validation API: ``mk_validator``, ``presets``, ``validators``."""

from __future__ import annotations

from typing import Any

from .runner import PRESETS as presets
from .runner import Validator, mk_validator, parse_ref


class _Validators:
    """``validators.noPickleFiles`` or ``validators.maxSize("10G")``, as in the seed."""

    def __getattr__(self, name: str) -> Any:
        from .builtin import BUILTINS

        if name not in BUILTINS:
            raise AttributeError(name)
        _check, _desc, takes_arg = BUILTINS[name]
        if takes_arg:
            return lambda arg: parse_ref({name: arg}, {})
        return parse_ref(name, {})


validators = _Validators()

__all__ = ["Validator", "mk_validator", "presets", "validators"]
