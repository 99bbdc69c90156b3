"""engine.text.vocab: the rebuilt o200k_base.tiktoken has the published SHA-256; the search order and its errors."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.text import vocab

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One verified file, built from quicktok, that tests copy around."""
    return vocab.install(tmp_path_factory.mktemp("built"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(vocab.ENV_ENCODINGS_BASE, raising=False)
    monkeypatch.setenv(vocab.ENV_CACHE_DIR, str(tmp_path / "cache"))


def put(built: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(built, folder / vocab.VOCAB_FILE))


def test_built_file_has_published_sha256(built):
    assert built.name == "o200k_base.tiktoken"
    assert hashlib.sha256(built.read_bytes()).hexdigest() == (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")
    first, last = built.read_bytes().splitlines()[0], built.read_bytes().splitlines()[-1]
    assert first == b"IQ== 0" and last.endswith(b" 199997")  # "!" is rank 0; ranks 0..199997


def test_install_is_a_noop_when_verified_and_repairs_a_bad_file(built, tmp_path):
    path = put(built, tmp_path / "d")
    os.utime(path, (1, 1))
    assert vocab.install(tmp_path / "d") == path and path.stat().st_mtime == 1
    assert built.stat().st_mode & 0o777 == 0o644  # readable by every user sharing the cache
    path.write_bytes(b"garbage")
    assert vocab.install(tmp_path / "d") == path
    assert vocab.sha256_file(path) == vocab.VOCAB_SHA256
    assert [p.name for p in path.parent.iterdir()] == [vocab.VOCAB_FILE]  # no temp file left behind


def test_cache_dir(monkeypatch, tmp_path):
    assert vocab.cache_dir() == tmp_path / "cache" / "tiktoken"
    monkeypatch.delenv(vocab.ENV_CACHE_DIR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert vocab.cache_dir() == tmp_path / "home" / ".cache" / "gptoss-serve" / "tiktoken"


def test_env_var_wins_over_model_dir_and_cache(built, monkeypatch, tmp_path):
    put(built, tmp_path / "model")
    monkeypatch.setenv(vocab.ENV_ENCODINGS_BASE, str(put(built, tmp_path / "env").parent))
    assert vocab.find_vocab_dir(tmp_path / "model") == tmp_path / "env"


def test_env_var_without_the_file_is_an_error(built, monkeypatch, tmp_path):
    put(built, tmp_path / "model")  # would be found, but a set env var must hold the file
    monkeypatch.setenv(vocab.ENV_ENCODINGS_BASE, str(tmp_path / "empty"))
    with pytest.raises(vocab.VocabNotFoundError) as err:
        vocab.find_vocab_dir(tmp_path / "model")
    assert str(tmp_path / "empty" / "o200k_base.tiktoken") in str(err.value)
    assert "TIKTOKEN_ENCODINGS_BASE" in str(err.value)


def test_model_dir_before_cache(built, tmp_path):
    put(built, tmp_path / "model")
    assert vocab.find_vocab_dir(tmp_path / "model") == tmp_path / "model"
    assert not (tmp_path / "cache").exists()


def test_cache_is_built_from_quicktok_when_nothing_else(tmp_path):
    assert vocab.find_vocab_dir(tmp_path / "model-without-vocab") == tmp_path / "cache" / "tiktoken"
    assert vocab.sha256_file(tmp_path / "cache" / "tiktoken" / vocab.VOCAB_FILE) == vocab.VOCAB_SHA256


@pytest.mark.parametrize("where", ["model", "env"])
def test_wrong_hash_is_an_error_naming_path_and_expected_hash(monkeypatch, tmp_path, where):
    bad = tmp_path / where / vocab.VOCAB_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"IQ== 0\n")
    if where == "env":
        monkeypatch.setenv(vocab.ENV_ENCODINGS_BASE, str(bad.parent))
    with pytest.raises(vocab.VocabHashError) as err:
        vocab.find_vocab_dir(tmp_path / "model")
    assert str(bad) in str(err.value) and vocab.VOCAB_SHA256 in str(err.value)


def run_without_site_packages(code: str, env: dict) -> subprocess.CompletedProcess:
    """`python -S`: no site-packages, so quicktok is really not installed (engine.text.vocab needs only the stdlib)."""
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)


def test_missing_everywhere_says_what_and_how_to_fix(tmp_path):
    env = {"GPTOSS_CACHE_DIR": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
    code = ("from engine.text import vocab\n"
            "try:\n"
            f"    vocab.find_vocab_dir({str(tmp_path / 'model')!r})\n"
            "except vocab.VocabNotFoundError as err:\n"
            "    assert isinstance(err, FileNotFoundError)\n"
            "    print(err)\n")
    result = run_without_site_packages(code, env)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert message.startswith("o200k_base.tiktoken not found")
    assert str(tmp_path / "model" / "o200k_base.tiktoken") in message
    assert str(tmp_path / "cache" / "tiktoken" / "o200k_base.tiktoken") in message
    for fix in ("python -m engine.text.vocab install", "set TIKTOKEN_ENCODINGS_BASE", "into the checkpoint directory"):
        assert fix in message


def test_cli_install_prints_the_path(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.text.vocab", "install", "--dest", str(tmp_path / "d")],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(tmp_path / "d" / vocab.VOCAB_FILE)
    assert vocab.sha256_file(tmp_path / "d" / vocab.VOCAB_FILE) == vocab.VOCAB_SHA256
