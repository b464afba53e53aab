"""The broker address of the bridge: ``rabbitmq-stream://user:password@host:5552/vhost``.

``rabbitmq-stream+tls://`` connects with TLS (default port 5551). The vhost is
URL-encoded (``%2F`` is ``/``, the default); user and password may be too.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from hidra_ng.errors import ConfigError

SCHEMES = {"rabbitmq-stream": 5552, "rabbitmq-stream+tls": 5551}
EXAMPLE = "rabbitmq-stream://user:password@broker:5552/%2F"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    vhost: str
    username: str
    password: str
    tls: bool

    def __str__(self) -> str:
        """The URI without the password (for logs and messages)."""
        scheme = "rabbitmq-stream+tls" if self.tls else "rabbitmq-stream"
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"{scheme}://{self.username}@{host}:{self.port}/{vhost}"


def problem(uri: object) -> str:
    """Why ``uri`` is no usable broker URI ('' if it is one)."""
    if not isinstance(uri, str) or not uri.strip():
        return "is empty"
    try:
        parts = urllib.parse.urlsplit(uri.strip())
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError as err:
        return f"is not valid ({err})"
    if parts.scheme not in SCHEMES:
        return f"has the scheme {parts.scheme or 'none'!r}, not rabbitmq-stream://"
    if not parts.hostname:
        return "names no host"
    if parts.query or parts.fragment:
        return "has a query or fragment"
    if "/" in parts.path[1:]:
        return "has more than one path segment (write the vhost '/' as %2F)"
    return ""


def parse(uri: str) -> BrokerAddress:
    """The address in ``uri``; ConfigError naming it and what was expected otherwise."""
    why = problem(uri)
    if why:
        shown = _hide_password(uri)
        raise ConfigError(f"RabbitMQ URI {shown!r} {why}; expected e.g. {EXAMPLE!r}")
    parts = urllib.parse.urlsplit(uri.strip())
    port = parts.port
    path = parts.path[1:]
    assert parts.hostname
    vhost = urllib.parse.unquote(path) if path else "/"
    return BrokerAddress(
        host=parts.hostname,
        port=port or SCHEMES[parts.scheme],
        vhost=vhost,
        username=urllib.parse.unquote(parts.username) if parts.username else "guest",
        password=urllib.parse.unquote(parts.password) if parts.password else "guest",
        tls=parts.scheme.endswith("+tls"),
    )


def _hide_password(uri: object) -> str:
    text = str(uri)
    try:
        parts = urllib.parse.urlsplit(text)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return text
