"""Credentials, found without ever writing them anywhere.

A source asks ``credentials(auth, *fallbacks)`` once and sends ``headers()`` with its
requests. Order: the model's ``auth`` (a bearer token from ``tokenEnvVar`` or
``tokenFile``; basic auth from ``usernameEnvVar`` and ``passwordEnvVar`` or
``passwordFile``), then the source's own conventions (for the Hub: HF_TOKEN, then
$HF_HOME/token). Sources with a chain of their own (boto3's for S3) use that instead.
Values live only in request headers; errors name where a secret was looked for,
never what it is. ``refresh()`` reads them again: a token file that a sidecar rotates
is picked up when a server starts refusing the old one.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from . import settings
from .errors import AuthRequired
from .netconfig import AuthConfig


def _from_env(name: str, what: str) -> str:
    value = settings.env_value(name)
    if not value:
        raise AuthRequired(f"auth.{what} names ${name}, which is not set",
                           hint=f"export {name}=… (the secret itself never goes in models.toml)")
    return value.strip()


def _from_file(path_text: str, what: str) -> str:
    path = Path(path_text).expanduser()
    try:
        value = path.read_text("utf-8").strip()
    except OSError as e:  # a hint of its own: the network is not to blame (#33)
        raise AuthRequired(f"auth.{what} {path}: cannot read it ({e.strerror})",
                           hint=f"create it with the secret inside, or point auth.{what}"
                           " at the file that holds it") from None
    if not value:
        raise AuthRequired(f"auth.{what} {path} is empty",
                           hint="write the secret into it (one line)")
    return value


def find_token(auth: AuthConfig, *fallbacks: Callable[[], str | None]) -> str | None:
    if auth.token_env_var:
        return _from_env(auth.token_env_var, "tokenEnvVar")
    if auth.token_file:
        return _from_file(auth.token_file, "tokenFile")
    for fallback in fallbacks:
        if value := fallback():
            return value.strip()
    return None


class Credentials:
    """The ``Authorization`` a source sends (none when nothing is configured)."""

    def __init__(self, auth: AuthConfig, *fallbacks: Callable[[], str | None]) -> None:
        self.auth = auth
        self.fallbacks = fallbacks
        self._headers: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        a = self.auth
        if a.username_env_var:
            user = _from_env(a.username_env_var, "usernameEnvVar")
            password = (_from_env(a.password_env_var, "passwordEnvVar") if a.password_env_var
                        else _from_file(a.password_file or "", "passwordFile"))
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        token = find_token(a, *self.fallbacks)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = self._read()
        return self._headers

    def refresh(self) -> bool:
        """Read the secrets again; True when they changed (worth one more try)."""
        old = self._headers
        self._headers = None
        try:
            return self.headers() != old
        except AuthRequired:
            return False

    @property
    def anonymous(self) -> bool:
        return not self.headers()


def hf_token_fallbacks() -> list[Callable[[], str | None]]:
    def from_file() -> str | None:
        try:
            return settings.hf_token_file().read_text("utf-8").strip() or None
        except OSError:
            return None

    return [settings.hf_token_env, from_file]
