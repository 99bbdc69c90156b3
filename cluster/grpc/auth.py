"""Who may call the gateway: API keys in `authorization` metadata, and TLS / mTLS server credentials from files.

Flow: every call except grpc.health.v1 passes `AuthInterceptor`, which reads `authorization: Bearer KEY` and
compares it with every configured key in constant time (hmac.compare_digest; no early exit) -> no match:
UNAUTHENTICATED before any handler runs. The servicer asks `ApiKeys.caller` (cluster/auth.py, shared with the HTTP
ingress) for the key's identity (the key to rate-limit on and the owner of stored responses: a short digest, never
the key itself). With no keys configured every call is allowed, as the
HTTP API does. TLS: `server_credentials` reads the certificate chain and key (and for mTLS the client CA bundle,
with client certificates required) from the files named in the config.
"""

from pathlib import Path

import grpc

from cluster.auth import ANONYMOUS, ApiKeys, bearer
from cluster.config import ConfigError, GrpcConfig

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # probes need no key (as GET /health on the HTTP API)
__all__ = ["ANONYMOUS", "ApiKeys", "AuthInterceptor", "caller", "server_credentials"]


def caller(keys: ApiKeys, metadata) -> str | None:
    """The identity of the key in a call's `authorization` metadata (None: no valid key)."""
    token = next((value for name, value in metadata or () if name == "authorization"), None)
    return keys.caller(bearer(token))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Ends calls without a valid key with UNAUTHENTICATED (health is open)."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not self.keys.required or details.method.startswith(OPEN_METHODS):
            return handler
        if caller(self.keys, details.invocation_metadata) is not None:
            return handler
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                        "incorrect or missing API key; send metadata 'authorization: Bearer <key>'")


def _refusal(handler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as `handler` that only ends the call with `code`."""
    async def refuse(request, context):
        await context.abort(code, message)

    async def refuse_stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kinds = {(False, False): (grpc.unary_unary_rpc_method_handler, refuse),
             (False, True): (grpc.unary_stream_rpc_method_handler, refuse_stream),
             (True, False): (grpc.stream_unary_rpc_method_handler, refuse),
             (True, True): (grpc.stream_stream_rpc_method_handler, refuse_stream)}
    make, behaviour = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def server_credentials(config: GrpcConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (None: plaintext); with a client CA, client certs are required."""
    if not config.tls:
        return None
    chain, key = _read(config.tls_cert_file, "tls_cert_file"), _read(config.tls_key_file, "tls_key_file")
    client_ca = _read(config.tls_client_ca_file, "tls_client_ca_file") if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _read(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"grpc.{name} {path!r} cannot be read: {err}") from None
