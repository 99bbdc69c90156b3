"""The gRPC gateway: a grpc.aio server with the Inference servicer, grpc.health.v1, reflection, auth, TLS and limits.

Flow: `Gateway(config, models)` -> `start()` binds `grpc.host:grpc.port` (127.0.0.1 unless configured; TLS or mTLS
when certificate files are configured; SO_REUSEPORT off, so a taken port fails instead of being shared) with the
message-size limits and the `AuthInterceptor`, marks health SERVING -> calls run in `InferenceServicer` ->
`stop(grace)` marks health NOT_SERVING, refuses new calls and lets calls in flight finish for `grace` seconds.
While the cluster drains (the front door learns it from the hub) health says NOT_SERVING and new calls get
UNAVAILABLE. `cluster.app.ServeGrpcGateway` runs one in a Serve replica, with a Serve handle per model as its
ModelClients.
"""

import asyncio
import logging
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.config import AppConfig
from cluster.frontdoor import FrontDoor
from cluster.grpc import codegen
from cluster.grpc.auth import ApiKeys, AuthInterceptor, server_credentials
from cluster.grpc.limits import Limits
from cluster.grpc.servicer import InferenceServicer

log = logging.getLogger(__name__)


def server_options(config: AppConfig) -> list[tuple[str, int]]:
    g = config.grpc
    return [("grpc.max_receive_message_length", g.max_message_bytes),
            ("grpc.max_send_message_length", g.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 60_000),  # notice dead clients on idle connections
            ("grpc.http2.max_pings_without_data", 0)]


class Gateway:
    def __init__(self, config: AppConfig, models: dict, hub=None):
        self.config = config
        self.stubs = codegen.stubs()
        self.keys = ApiKeys(config.auth.resolve())
        self.limits = Limits(config.grpc)
        self.door = FrontDoor(config, models, hub, f"gateway/{os.getpid()}-{id(self):x}")
        self.servicer = InferenceServicer(self.door, self.stubs.pb, self.keys, self.limits)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        host = self.config.grpc.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> str:
        """Binds and starts serving; returns host:port."""
        g = self.config.grpc
        server = grpc.aio.server(interceptors=[AuthInterceptor(self.keys)], options=server_options(self.config))
        self.stubs.grpc.add_InferenceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if g.reflection:
            reflection.enable_server_reflection([self.stubs.service, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                                server)
        bind = f"[{g.host}]:{g.port}" if ":" in g.host else f"{g.host}:{g.port}"
        credentials = server_credentials(g)
        try:
            port = server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
        except RuntimeError as err:
            raise RuntimeError(f"the gRPC gateway cannot listen on {bind} (grpc.host/grpc.port): {err}") from None
        if port == 0:
            raise RuntimeError(f"the gRPC gateway cannot listen on {bind} (grpc.host/grpc.port): port in use?")
        await server.start()
        self.server, self.port = server, port
        for service in ("", self.stubs.service):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.door.pusher.start()
        self._watch = asyncio.get_running_loop().create_task(self._watch_drain())
        log.info("gRPC gateway listening on %s (%s)", self.address, "TLS" if g.tls else "plaintext")
        return self.address

    async def _watch_drain(self) -> None:
        """Health NOT_SERVING once the cluster drains (clients and load balancers move away)."""
        while not self.door.draining:
            await asyncio.sleep(self.config.metrics_push_interval_s)
        for service in ("", self.stubs.service):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is None:
            return
        self._watch.cancel()
        await self.door.pusher.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None
