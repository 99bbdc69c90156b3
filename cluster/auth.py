"""Who is calling: API keys -> the caller's identity, the same for every protocol.

Flow: a protocol adapter hands over the bearer token it received (HTTP `Authorization: Bearer KEY`, gRPC
`authorization` metadata) -> `ApiKeys.caller(token)` compares it with every configured key in constant time
(hmac.compare_digest each, no early exit) -> the identity "key:<16 hex digits of sha256(key)>", ANONYMOUS when no keys
are configured, or None (refused: 401 / UNAUTHENTICATED). The identity, never the key, travels on: the front door
stamps it on the `GenerateRequest` (`caller`), the gRPC limits key their buckets on it, and stored responses belong to
it (another key gets 404).
"""

import hashlib
import hmac

ANONYMOUS = "anonymous"  # the caller identity when no keys are configured


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys]
        self.required = bool(self._keys)

    def caller(self, token: bytes | str | None) -> str | None:
        """The identity of `token` ("key:<digest>"), ANONYMOUS when no keys are configured, or None."""
        if not self.required:
            return ANONYMOUS
        given = token.encode() if isinstance(token, str) else (token or b"")
        ok = False
        for key in self._keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(key, given)
        return identity(given) if ok else None


def identity(key: bytes) -> str:
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


def bearer(header: str | bytes | None) -> bytes:
    """The token of an `Authorization: Bearer TOKEN` value (b"" for anything else)."""
    text = header.decode() if isinstance(header, bytes) else (header or "")
    scheme, _, token = text.partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""
