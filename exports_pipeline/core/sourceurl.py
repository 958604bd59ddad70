"""Source and destination settings from the command's environment, with the embedded demo as the default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from exports_pipeline.core.errors import ConfigurationError, UnsupportedSourceError

SOURCE_ENV = "EXPORTS_SOURCE_URL"
DESTINATION_ENV = "EXPORTS_DESTINATION"
DEMO_DIR_ENV = "EXPORTS_DEMO_DIR"
POSTGRESQL = "postgresql"
SQLITE = "sqlite"
_DIALECTS = {"postgresql": POSTGRESQL, "postgres": POSTGRESQL, "sqlite": SQLITE}


@dataclass(frozen=True)
class Locations:
    source_url: str
    destination: str
    is_demo: bool


def demo_locations(demo_dir: str | os.PathLike) -> Locations:
    base = Path(demo_dir).resolve()
    return Locations(f"sqlite:///{base / 'source.sqlite'}", str(base / "exports"), True)


def resolve_locations(env: Mapping[str, str]) -> Locations:
    """Both variables set: production. Neither: the embedded demo (./demo). One: refuse, naming the other."""
    source, destination = env.get(SOURCE_ENV, "").strip(), env.get(DESTINATION_ENV, "").strip()
    if source and destination:
        return Locations(source, destination, False)
    if not source and not destination:
        return demo_locations(env.get(DEMO_DIR_ENV) or "demo")
    missing = SOURCE_ENV if not source else DESTINATION_ENV
    present = DESTINATION_ENV if not source else SOURCE_ENV
    raise ConfigurationError(
        f"{missing} is not set while {present} is: set both (production) or neither (embedded demo)"
    )


def source_dialect(url: str) -> str:
    """The database a source URL names, POSTGRESQL or SQLITE: what every reader and the seed dispatch on."""
    scheme = urlsplit(url).scheme
    if scheme not in _DIALECTS:
        raise UnsupportedSourceError(
            f"source URL {redact_url(url)!r}: unsupported scheme {scheme!r}; use postgresql://... or sqlite:///path"
        )
    return _DIALECTS[scheme]


def sqlite_path(url: str) -> Path:
    """sqlite:///relative/path or sqlite:////absolute/path (the SQLAlchemy convention)."""
    return Path(unquote(url.removeprefix("sqlite:///")))


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs, metadata and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def redact_text(text: str, url: str) -> str:
    """Remove the URL's password from a message (drivers may echo connection strings)."""
    password = urlsplit(url).password
    if not password:
        return text
    return text.replace(password, "***").replace(unquote(password), "***")
