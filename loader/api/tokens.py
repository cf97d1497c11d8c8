"""API tokens from LOADER_API_TOKENS: `scope:token` pairs, a token possibly `sha256:<hex>`.

Only sha256 digests are kept in memory, and a presented token is hashed and compared to every
known digest in constant time, as bytes: a non-ASCII token is simply unknown (401), never a 500.
Scopes nest: admin may do what write may, write what read may.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

SCOPES = ("read", "write", "admin")


class TokenConfigError(ValueError):
    """LOADER_API_TOKENS is malformed; the message says which entry."""


@dataclass(frozen=True)
class Token:
    scope: str
    digest: bytes


def parse_tokens(text: str) -> list[Token]:
    """Parse `read:abc,write:sha256:<64 hex>,admin:...`."""
    tokens = []
    for position, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), 1):
        scope, separator, secret = entry.partition(":")
        if not separator or scope not in SCOPES or not secret:
            raise TokenConfigError(
                f"LOADER_API_TOKENS entry {position}: expected scope:token with scope one of "
                f"{', '.join(SCOPES)}"
            )
        if secret.startswith("sha256:"):
            try:
                digest = bytes.fromhex(secret.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise TokenConfigError(f"LOADER_API_TOKENS entry {position}: sha256 needs 64 hex")
        else:
            digest = hashlib.sha256(secret.encode()).digest()
        tokens.append(Token(scope, digest))
    return tokens


def scope_of(tokens: list[Token], presented: bytes) -> str | None:
    """The scope of the presented token, or None; every digest is compared, in constant time."""
    digest = hashlib.sha256(presented).digest()
    found = None
    for token in tokens:
        if hmac.compare_digest(token.digest, digest):
            found = token.scope
    return found


def allows(scope: str | None, needed: str) -> bool:
    return scope is not None and SCOPES.index(scope) >= SCOPES.index(needed)
