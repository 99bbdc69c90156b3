"""Shared fixtures for the text tests: every test runs with the vocabulary cache in a temporary folder."""

import pytest

from engine.text.tokenizer import Tokenizer


@pytest.fixture(scope="session", autouse=True)
def vocab_cache(tmp_path_factory):
    """Never touch ~/.cache or an ambient TIKTOKEN_ENCODINGS_BASE from a test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
        mp.setenv("GPTOSS_CACHE_DIR", str(tmp_path_factory.mktemp("gptoss-cache")))
        yield


@pytest.fixture(scope="session")
def tok(vocab_cache) -> Tokenizer:
    return Tokenizer.load()
