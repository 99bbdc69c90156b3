"""TLS, mTLS, per-key rate limits, stream limits, message size and the loopback default: gateways with their own
settings, run in this process, in front of the session app's real replicas."""

import ipaddress
import threading
import time

import grpc
import psutil
import pytest

from tests.cluster.conftest import API_KEY
from tests.grpc.conftest import AUTH, ThreadGateway

OTHER_KEY = "other-key-0123456789"


@pytest.fixture
def gateway(grpc_app):
    made = []

    def make(grpc_settings: dict, **config):
        gw = ThreadGateway({"models": [{"name": "tiny", "path": "unused"}], "auth": {"api_keys": [API_KEY, OTHER_KEY]},
                            "grpc": grpc_settings, **config}, grpc_app)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


def _stub(stubs, channel):
    return stubs.grpc.InferenceStub(channel)


def _list(stubs, channel, metadata=AUTH):
    return _stub(stubs, channel).ListModels(stubs.pb.ListModelsRequest(), metadata=metadata, timeout=10)


def test_binds_loopback_by_default(grpc_app):
    listening = {ipaddress.ip_address(c.laddr.ip) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == grpc_app.port}
    assert listening and all((ip.ipv4_mapped or ip).is_loopback for ip in listening), listening


def test_tls_handshake(gateway, certs, stubs):
    gw = gateway({"tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key)})
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    assert [m.name for m in _list(stubs, grpc.secure_channel(gw.address, creds)).models] == ["tiny"]
    with pytest.raises(grpc.RpcError) as err:  # plaintext to a TLS port
        _list(stubs, grpc.insecure_channel(gw.address))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    untrusting = grpc.ssl_channel_credentials(root_certificates=certs.other_client_cert.read_bytes())
    with pytest.raises(grpc.RpcError) as err:  # the client does not trust the server's CA
        _list(stubs, grpc.secure_channel(gw.address, untrusting))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_ca(gateway, certs, stubs):
    gw = gateway({"tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key),
                  "tls_client_ca_file": str(certs.ca)})
    ca = certs.ca.read_bytes()

    def channel(cert=None, key=None):
        creds = grpc.ssl_channel_credentials(ca, key and key.read_bytes(), cert and cert.read_bytes())
        return grpc.secure_channel(gw.address, creds)

    assert _list(stubs, channel(certs.client_cert, certs.client_key)).models
    for cert, key in ((None, None), (certs.other_client_cert, certs.other_client_key)):
        with pytest.raises(grpc.RpcError) as err:
            _list(stubs, channel(cert, key))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:  # a good certificate does not replace the API key
        _list(stubs, channel(certs.client_cert, certs.client_key), metadata=())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _retry_hint(err: grpc.RpcError) -> int:
    return int(dict(err.trailing_metadata())["retry-after-ms"])


def test_overload_is_resource_exhausted_while_accepted_streams_finish(gateway, stubs):
    gw = gateway({"max_concurrent_streams": 2, "retry_after_ms": 750})
    stub, pb = _stub(stubs, grpc.insecure_channel(gw.address)), stubs.pb
    req = pb.GenerateRequest(model="tiny", prompt="Go on:", sampling=pb.SamplingParams(max_tokens=40, ignore_eos=True))
    results, started = {}, [threading.Event(), threading.Event()]

    def run(i):
        tokens = 0
        for message in stub.Generate(req, metadata=AUTH, timeout=120):
            tokens += len(message.token_ids)
            started[i].set()
        results[i] = tokens

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert all(e.wait(60) for e in started)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(req, metadata=AUTH, timeout=30))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _retry_hint(err.value) == 750
    assert "max_concurrent_streams" in err.value.details()
    for t in threads:
        t.join(120)
    assert results == {0: 40, 1: 40}  # the accepted streams ran to the end
    assert list(stub.Generate(req, metadata=AUTH, timeout=60))[-1].usage.completion_tokens == 40  # slots came back


def test_request_rate_per_key(gateway, stubs):
    gw = gateway({"requests_per_s": 0.5, "request_burst": 2})
    stub, pb = _stub(stubs, grpc.insecure_channel(gw.address)), stubs.pb
    count = pb.TokenizeRequest(model="tiny", text="hi")
    for _ in range(2):
        stub.CountTokens(count, metadata=AUTH, timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        stub.CountTokens(count, metadata=AUTH, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and 0 < _retry_hint(err.value) <= 2000
    stub.CountTokens(count, metadata=(("authorization", f"Bearer {OTHER_KEY}"),), timeout=30)  # its own bucket


def test_token_rate_per_key(gateway, stubs):
    gw = gateway({"tokens_per_s": 4, "token_burst": 4})
    stub, pb = _stub(stubs, grpc.insecure_channel(gw.address)), stubs.pb
    req = pb.GenerateRequest(model="tiny", prompt="Hello", sampling=pb.SamplingParams(max_tokens=30, ignore_eos=True))
    started = time.monotonic()
    assert list(stub.Generate(req, metadata=AUTH, timeout=60))[-1].usage.completion_tokens == 30  # 31 tokens: debt
    refilled = 4 * (time.monotonic() - started)
    if refilled > 20:
        pytest.skip(f"the call took {refilled / 4:.1f} s: the bucket refilled before it ended")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(req, metadata=AUTH, timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens_per_s" in err.value.details()
    assert 0 < _retry_hint(err.value) <= 1000 * 31 / 4
    other = (("authorization", f"Bearer {OTHER_KEY}"),)
    assert list(stub.Generate(req, metadata=other, timeout=60))[-1].usage.completion_tokens == 30  # its own bucket


def test_message_size_limit(gateway, stubs):
    gw = gateway({"max_message_bytes": 4096})
    stub, pb = _stub(stubs, grpc.insecure_channel(gw.address)), stubs.pb
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(model="tiny", prompt="x" * 10_000), metadata=AUTH, timeout=30))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
