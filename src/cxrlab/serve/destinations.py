"""Where the service sends its results: ``--forward AE@HOST:PORT`` and ``--forward-stow URL``.

Parsing and checking only (no network library), so the settings can check the options
before anything is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cxrlab.errors import ConfigError

STOW_TOKEN_ENV = "CXRLAB_FORWARD_STOW_TOKEN"
"""Bearer token sent to ``--forward-stow`` destinations, when set."""

_AE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e ]{1,16}$")          # PS3.5 AE: 16 chars, no backslash or control
_FORWARD_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


def check_ae_title(value: str, option: str) -> str:
    """``value`` stripped, if it is a valid AE title (1-16 printable characters, no backslash).

    Raises:
        ConfigError: Not a valid AE title.
    """
    title = value.strip()
    if not title or not _AE_RE.match(title):
        raise ConfigError(option, f"{value!r} is not an AE title (1-16 printable characters, no backslash)")
    return title


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP (``AE@HOST:PORT``) or a STOW-RS service (its URL)."""

    kind: Literal["dimse", "stow"]
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @property
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" if self.kind == "dimse" else self.url

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@HOST:PORT`` (``--forward``).

        Raises:
            ConfigError: Not of that form, or a bad AE title or port.
        """
        match = _FORWARD_RE.match(text.strip())
        if match is None:
            raise ConfigError("--forward", f"{text!r} is not AE@HOST:PORT (e.g. STORESCP@127.0.0.1:11112)")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError("--forward", f"port {port} of {text!r} is out of range 1-65535")
        return cls("dimse", check_ae_title(match["ae"], "--forward"), match["host"].strip("[]"), port)

    @classmethod
    def stow(cls, url: str) -> Destination:
        """A STOW-RS base URL (``--forward-stow``): results are POSTed to ``URL/studies``.

        Raises:
            ConfigError: Not an http(s) URL.
        """
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError("--forward-stow", f"{url!r} is not an http(s) URL of a DICOMweb service")
        return cls("stow", url=url)


def parse_destinations(forward: Iterable[str], forward_stow: Iterable[str]) -> list[Destination]:
    """The ``--forward`` and ``--forward-stow`` destinations, duplicates removed.

    Raises:
        ConfigError: A malformed destination.
    """
    out: dict[str, Destination] = {}
    for text in forward:
        dest = Destination.parse(text)
        out[dest.name] = dest
    for url in forward_stow:
        dest = Destination.stow(url)
        out[dest.name] = dest
    return list(out.values())


__all__ = ["Destination", "STOW_TOKEN_ENV", "check_ae_title", "parse_destinations"]
