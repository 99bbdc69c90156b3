"""Who is calling: a bearer token -> the caller's key (name, scopes, quotas, guards), the same for every protocol.

Flow: a protocol adapter hands over the bearer token it received (HTTP `Authorization: Bearer KEY`, gRPC
`authorization` metadata) -> `ApiKeys.key(token)`: the key files are re-read if they changed (cluster/keys.py: named
keys with hashed secrets and flat keys, rotation with a grace period), then the token is compared with every secret
in constant time -> the `Key`, ANONYMOUS when no keys are configured, or None (refused: 401 / UNAUTHENTICATED) ->
the adapter makes a `Caller` (the key, the client's address, the protocol and route) and hands it to the front door.
The key's identity, never the key, travels on: the front door stamps it on the `GenerateRequest` (`caller`), and
stored responses belong to it (another key gets 404); metrics and the audit log name the key by its name.
"""

from dataclasses import dataclass

from cluster.keys import ANONYMOUS, Key, KeyRing, flat_identity

__all__ = ["ANONYMOUS", "ApiKeys", "Caller", "bearer", "identity"]


@dataclass(frozen=True)
class Caller:
    """Who sent one request, as the front door needs it."""

    key: Key  # the named key (ANONYMOUS when no keys are configured)
    client: str = ""  # the peer's address ("127.0.0.1:50312", gRPC "ipv4:127.0.0.1:50312")
    protocol: str = "http"  # "http" | "grpc"
    route: str = ""  # the concrete route, for the audit log ("POST /v1/chat/completions", "/gptoss.v1.Inference/Chat")

    @property
    def identity(self) -> str:
        return self.key.identity


INTERNAL = Caller(ANONYMOUS, "", "internal", "internal")  # the front door's own requests (a guard's classifier)


class ApiKeys:
    def __init__(self, auth, filters: set[str] | None = None):
        """`auth`: the config's AuthConfig; `filters`: the guard filter names keys may name (None: any)."""
        self.ring = KeyRing(auth, filters=filters)

    @property
    def required(self) -> bool:
        return self.ring.required

    def key(self, token: bytes | str | None) -> Key | None:
        """The key of `token`, ANONYMOUS when no keys are configured, or None."""
        self.ring.refresh()
        if not self.ring.required:
            return ANONYMOUS
        given = token.encode() if isinstance(token, str) else (token or b"")
        return self.ring.find(given)

    def caller(self, token: bytes | str | None) -> str | None:
        """The identity of `token` ("key:<digest>" or "name:<name>"), ANONYMOUS's when no keys are configured, or
        None."""
        key = self.key(token)
        return key.identity if key is not None else None


def identity(key: bytes) -> str:
    """The identity of a flat key."""
    return flat_identity(key)


def bearer(header: str | bytes | None) -> bytes:
    """The token of an `Authorization: Bearer TOKEN` value (b"" for anything else)."""
    text = header.decode() if isinstance(header, bytes) else (header or "")
    scheme, _, token = text.partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""
