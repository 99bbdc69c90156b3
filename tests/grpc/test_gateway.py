"""The gateway's port: one gateway per node by default (a taken port fails), or, with grpc.replicas_per_node > 1,
several that share it through SO_REUSEPORT, so that one going away (a killed replica, a rolling restart) leaves
the others taking new connections."""

import asyncio

import pytest

from cluster.config import load_config
from cluster.grpc.gateway import Gateway
from tests.cluster.conftest import free_port, model_entry


def gateway(port: int, per_node: int) -> Gateway:
    config = load_config({"models": [model_entry("tiny", "/unused")],
                          "grpc": {"enabled": True, "port": port, "replicas_per_node": per_node}})
    return Gateway(config, {})


async def list_models(stubs, port: int) -> list[str]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await stubs.grpc.InferenceStub(channel).ListModels(stubs.pb.ListModelsRequest(), timeout=10)
    return [m.name for m in reply.models]


def test_a_taken_port_fails_with_one_replica_per_node():
    async def main():
        port = free_port()
        first = gateway(port, 1)
        await first.start()
        try:
            with pytest.raises(RuntimeError, match="cannot listen on 127.0.0.1"):
                await gateway(port, 1).start()
        finally:
            await first.stop(0)

    asyncio.run(main())


def test_replicas_on_one_node_share_the_port_and_outlive_each_other(stubs):
    async def main():
        port = free_port()
        first, second = gateway(port, 2), gateway(port, 2)
        await first.start()
        await second.start()
        try:
            assert [await list_models(stubs, port) for _ in range(4)] == [["tiny"]] * 4
            await first.stop(0)                                   # one replica gone: new connections still served
            assert [await list_models(stubs, port) for _ in range(4)] == [["tiny"]] * 4
        finally:
            await first.stop(0)
            await second.stop(0)

    asyncio.run(main())
