"""How to reach a server: the network and auth settings models.toml gives a model.

A leaf of its own, apart from config.py, because the code that talks to servers
(``http``, ``auth``) needs these two values and nothing else of the manifest; were they
in config, the network code would import the reader of models.toml, which asks the
sources, which import the network code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkConfig:
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    max_attempts: int = 3
    base_delay: float = 2.0
    bandwidth_limit: int | None = None  # bytes per second
    proxy: str | None = None
    max_delay: float = 60.0
    ca_bundle: str | None = None  # a PEM file of CAs trusted on top of the default ones


@dataclass(frozen=True)
class AuthConfig:
    """Where credentials are found, never what they are: a bearer token (env var or
    file) or basic auth (user name from an env var, password from an env var or file)."""

    token_env_var: str | None = None
    token_file: str | None = None
    username_env_var: str | None = None
    password_env_var: str | None = None
    password_file: str | None = None
    # hosts besides the registry's own whose token realm may get the credentials
    token_realms: tuple[str, ...] = ()

    def env_vars(self) -> set[str]:
        """The variables that hold secrets: kept from validator commands."""
        return {v for v in (self.token_env_var, self.username_env_var, self.password_env_var)
                if v}
