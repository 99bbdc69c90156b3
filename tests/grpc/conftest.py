"""Fixtures for the gRPC gateway tests: stubs generated from proto/ in this run, the cluster, gateways, certificates.

`stubs` runs protoc on proto/ (grpcio-tools) at session start and checks the package's generated stubs equal its
output; every client here uses them.
`ray_cluster` reuses the Ray cluster the tests/cluster fixtures started in this session, else starts one.
`grpc_app` deploys one application (model "tiny", one replica, the GrpcGateway deployment, an API key) for the
session; `ThreadGateway` runs extra gateways with other settings in this process, on the same model's replicas.
"""

import asyncio
import datetime
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.cluster.conftest import API_KEY, GATEWAY_RESOURCE, free_port, model_entry

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """The generated modules, checked to be what protoc makes of proto/ in this run (test_codegen tells more)."""
    from cluster.grpc import codegen

    codegen.generate()
    fresh = codegen.build(tmp_path_factory.mktemp("stubs"))  # not swapped in: other runs may be importing _gen
    for path in fresh.rglob("*.py*"):
        assert path.read_bytes() == (codegen.OUT_DIR / path.relative_to(fresh)).read_bytes(), path
    return codegen.stubs()


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray import serve

    if ray.is_initialized():  # tests/cluster's session cluster (its fixture shuts it down)
        yield
        return
    ray.init(address="local", num_cpus=2, resources={GATEWAY_RESOURCE: 1}, include_dashboard=False,
             log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="/tmp/gptr"))
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    yield
    serve.shutdown()
    ray.shutdown()


@dataclass
class App:
    name: str
    port: int  # the GrpcGateway deployment's port
    stubs: object

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def stub(self):
        return self.stubs.grpc.InferenceStub(self.channel())

    def handle(self, model: str):
        from ray import serve

        return serve.get_deployment_handle(f"LLMServer:{model}", app_name=self.name)

    def engine_stats(self, model: str) -> dict:
        return self.handle(model).record_routing_stats.remote().result(timeout_s=30)


def deploy(name: str, config: dict, stubs) -> App:
    from ray import serve

    from cluster.app import build_from_config
    from cluster.config import load_config

    port = free_port()
    config = {**config, "name": name, "metrics_push_interval_s": 0.5,
              "grpc": {"enabled": True, "port": port, **config.get("grpc", {})},
              "responses": {"store_path": tempfile.mkdtemp(prefix="gptoss-store-") + "/responses.sqlite3"}}
    serve.run(build_from_config(load_config(config)), name=name, route_prefix=f"/{name}")
    app = App(name, port, stubs)
    wait_serving(app.channel(), stubs)
    return app


def wait_serving(channel: grpc.Channel, stubs, timeout: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    end = time.monotonic() + timeout
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=stubs.service), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > end:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="session")
def grpc_app(ray_cluster, stubs, tiny_model):
    """Model "tiny" (one replica; room for long generations), the gateway deployment, one API key."""
    from ray import serve

    entry = model_entry("tiny", tiny_model, engine={"kv_cache_memory": 32 << 20, "max_model_len": 4096,
                                                    "max_num_seqs": 16})
    # pinned by a node resource as the Helm chart pins it to the head pod: the one node here has it
    app = deploy("grpc", {"models": [entry], "auth": {"api_keys": [API_KEY]},
                          "grpc": {"node_resource": GATEWAY_RESOURCE}}, stubs)
    yield app
    serve.delete(app.name)


def wait_idle(app: App, model: str, timeout: float = 20) -> dict:
    """The engine's stats once nothing runs or waits and no KV block is held by a request."""
    end = time.monotonic() + timeout
    while True:
        stats = app.engine_stats(model)
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_cache_usage"] == 0:
            return stats
        if time.monotonic() > end:
            raise AssertionError(f"the engine still holds requests or blocks: {stats}")
        time.sleep(0.1)


class ThreadGateway:
    """A Gateway with its own config, served from an event loop in a thread of this process."""

    def __init__(self, config: dict, app: App, model: str = "tiny"):
        from ray import serve

        from cluster.app import ServeModelClient
        from cluster.config import load_config
        from cluster.grpc.gateway import Gateway

        self.port = free_port()
        self.config = load_config({**config, "grpc": {"enabled": True, "port": self.port, **config.get("grpc", {})}})
        handle = serve.get_deployment_handle(f"LLMServer:{model}", app_name=app.name)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            self.gateway = Gateway(self.config, {model: ServeModelClient(handle)})
            return await self.gateway.start()

        self.address = self.run(start())

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.gateway.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- certificates ------------------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """A test CA, a server certificate for localhost / 127.0.0.1, a client certificate from that CA and one from
    another CA."""
    d = tmp_path_factory.mktemp("certs")
    ca_key, ca_cert = _ca("gptoss test CA")
    other_key, other_cert = _ca("untrusted CA")
    files = {"ca": _write(d / "ca.pem", ca_cert)}
    for name, (issuer_key, issuer_cert), server in (("server", (ca_key, ca_cert), True),
                                                    ("client", (ca_key, ca_cert), False),
                                                    ("other_client", (other_key, other_cert), False)):
        key, cert = _leaf(name, issuer_key, issuer_cert, server)
        files[f"{name}_cert"], files[f"{name}_key"] = _write(d / f"{name}.pem", cert), _write(d / f"{name}.key", key)
    return Certs(**files)


def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, _sha256()))
    return key, cert


def _leaf(name: str, issuer_key, issuer_cert, server: bool):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(subject, issuer_cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(issuer_key, _sha256())


def _builder(subject, issuer, public_key):
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write(path: Path, obj) -> Path:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes"):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path
