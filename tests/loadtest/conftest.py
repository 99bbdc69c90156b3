"""Helpers for the load tester's tests: a run config aimed at a fake server, with the word tokenizer so token
counts are exact and no vocabulary file is needed."""

import pytest

from loadtest.config import RunConfig
from loadtest.fake_server import Chunk, FakeServer, Reply
from loadtest.metrics import Slo
from loadtest.tokenizer import WordTokenizer
from loadtest.workload import WorkloadSpec


def make_config(url: str, **overrides) -> RunConfig:
    workload = overrides.pop("workload", WorkloadSpec(input_len="8", output_len="16"))
    base = dict(url=url, model="fake", tokenizer=WordTokenizer(), progress=False, workload=workload, slo=Slo())
    return RunConfig(**(base | overrides))


def reply(*chunks: tuple[float, int, str], **kw) -> Reply:
    """Reply from (delay_s, tokens, channel) triples; the text is `tokens` words."""
    from loadtest.fake_server import words

    return Reply(chunks=[Chunk(d, words(n), ch) for d, n, ch in chunks], **kw)


@pytest.fixture
def fake_server():
    """fake_server(script) -> a started FakeServer, stopped after the test."""
    servers = []

    def start(script):
        servers.append(FakeServer(script).__enter__())
        return servers[-1]

    yield start
    for s in servers:
        s.__exit__(None, None, None)
