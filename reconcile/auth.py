"""Find a token without ever writing it anywhere.

Order: the model's ``auth.tokenEnvVar``, its ``auth.tokenFile``, then the source's
own conventions (for the Hub: HF_TOKEN, then $HF_HOME/token). The value lives only
in request headers; errors name where a token was looked for, never what it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import settings
from .config import AuthConfig
from .errors import AuthRequired


def find_token(auth: AuthConfig, *fallbacks: Callable[[], str | None]) -> str | None:
    if auth.token_env_var:
        value = settings.env_value(auth.token_env_var)
        if not value:
            raise AuthRequired(
                f"auth.tokenEnvVar names ${auth.token_env_var}, which is not set",
                hint=f"export {auth.token_env_var}=… (the token itself never goes in models.toml)",
            )
        return value.strip()
    if auth.token_file:
        path = Path(auth.token_file).expanduser()
        try:
            value = path.read_text("utf-8").strip()
        except OSError as e:
            raise AuthRequired(f"auth.tokenFile {path}: cannot read it ({e.strerror})") from None
        if not value:
            raise AuthRequired(f"auth.tokenFile {path} is empty")
        return value
    for fallback in fallbacks:
        if value := fallback():
            return value.strip()
    return None


def hf_token_fallbacks() -> list[Callable[[], str | None]]:
    def from_file() -> str | None:
        try:
            return settings.hf_token_file().read_text("utf-8").strip() or None
        except OSError:
            return None

    return [settings.hf_token_env, from_file]
