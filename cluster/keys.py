"""Named API keys: who may call, with which scopes, quotas and guard chains; re-read from files without a restart.

Flow: `KeyRing(auth)` builds the keys from the `auth:` section: each `auth.keys` entry (a name, the SHA-256 of its
secret, scopes, quotas, guard chains), the entries of `auth.keys_file` (a mounted Secret: `{"keys": [...]}` in YAML
or JSON), and every flat key of `auth.api_keys*` (an unrestricted key named `key-<8 hex of its digest>`) ->
`KeyRing.find(token)`: the token's SHA-256 compared with every secret in constant time (hmac.compare_digest each, no
early exit), a secret past its `not_after` skipped -> the `Key`, or None (401). `refresh()` (on the request path, at
most every `reload_interval_s`) re-reads the files; when they changed the ring is rebuilt, and a secret the new
files no longer hold stays valid `rotation_grace_s` (rotation: old and new both work for a while). A file that no
longer parses keeps the keys as they were (logged, counted in `reload_errors`). Plaintext keys are never kept:
files hold digests, and flat keys are hashed as they are read.
"""

import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError, model_validator

from cluster.guards.config import GuardChainSpec
from cluster.sections import ConfigError, Section, doc

log = logging.getLogger(__name__)
ROUTES = ("chat", "completions", "responses", "tokenize", "models")  # what a key's `routes` scope names
TOOLS = ("python", "browser", "mcp")  # the built-in tools a key's `tools` scope names
EFFORTS = ("low", "medium", "high")  # reasoning efforts, least first
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ScopeSpec(Section):
    """What a key may use; None (the default of each) allows everything."""

    models: list[str] | None = doc(None, "models the key may call (None: all)")
    routes: list[Literal[ROUTES]] | None = doc(None, f"routes the key may call, of {list(ROUTES)} (None: all; "
                                                     "gRPC Generate is completions, Chat is chat)")
    tools: list[Literal[TOOLS]] | None = doc(None, f"built-in tools the key may ask the server to run, of "
                                                   f"{list(TOOLS)} (None: all; function tools are the client's)")
    max_tokens: int | None = doc(None, "largest max_tokens / max_output_tokens the key may ask for; a request "
                                       "without one gets this", ge=1)
    max_reasoning_effort: Literal[EFFORTS] | None = doc(None, "highest reasoning effort the key may ask for; a "
                                                              "request without one gets at most this")

    @property
    def unrestricted(self) -> bool:
        return self == ScopeSpec()


class QuotaSpec(Section):
    """A key's quotas, held by the one quota ledger of the cluster (cluster/quota.py); None: no such limit."""

    requests_per_min: int | None = doc(None, "requests per minute (a bucket of this many, refilled continuously)",
                                       ge=1)
    tokens_per_min: int | None = doc(None, "prompt + generated tokens per minute (charged with the real counts when "
                                           "a request ends; a request is admitted while the key is not over)", ge=1)
    tokens_per_day: int | None = doc(None, "prompt + generated tokens per day (refilled continuously)", ge=1)


class SecretSpec(Section):
    sha256: str = doc("", "SHA-256 of the key, 64 lowercase hex digits (`gptoss keys new NAME` makes one)",
                      pattern=r"^[0-9a-f]{64}$")
    not_after: float | None = doc(None, "unix time after which this secret stops working (rotation); None: never")


class KeySpec(Section):
    """One named key: its secrets (digests only), scopes, quotas and guard chains."""

    name: str = doc("", "the key's name: in metrics (gptoss_key_*), the audit log and error messages; never secret",
                    pattern=NAME_PATTERN)
    secrets: list[SecretSpec] = doc([], "the key's accepted secrets (more than one while rotating)", min_length=1)
    scopes: ScopeSpec = doc(ScopeSpec, "what the key may use")
    quotas: QuotaSpec = doc(QuotaSpec, "how much the key may use, across every front door")
    guards: GuardChainSpec = doc(GuardChainSpec, "guard filters (guards.filters names) run on this key's requests, "
                                                 "after the model's")


class KeysFile(Section):
    """The content of `auth.keys_file`."""

    keys: list[KeySpec] = doc([], "the named keys")

    @model_validator(mode="after")
    def _unique(self) -> "KeysFile":
        check_unique(self.keys)
        return self


def check_unique(keys: list[KeySpec]) -> None:
    names = [k.name for k in keys]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"keys[].name must be unique, got {dupes} more than once")
    digests = [s.sha256 for k in keys for s in k.secrets]
    if len(set(digests)) != len(digests):
        raise ValueError("keys[].secrets: the same secret is listed twice")


@dataclass(frozen=True)
class Key:
    """A key as the front door sees it (never its secret)."""

    name: str  # in metrics, the audit log, error messages
    identity: str  # owner of stored responses: "key:<16 hex>" (flat keys, as before) or "name:<name>"
    scopes: ScopeSpec = field(default_factory=ScopeSpec)
    quotas: QuotaSpec = field(default_factory=QuotaSpec)
    guards: GuardChainSpec = field(default_factory=GuardChainSpec)


ANONYMOUS = Key("anonymous", "anonymous")  # the caller when no keys are configured


def flat_identity(key: bytes) -> str:
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


def flat_key(secret: str) -> tuple[bytes, Key]:
    """A flat `auth.api_keys*` key: unrestricted, named by its digest, its identity as before named keys existed."""
    digest = hashlib.sha256(secret.encode()).digest()
    return digest, Key("key-" + digest.hex()[:8], flat_identity(secret.encode()))


def named_key(spec: KeySpec) -> Key:
    return Key(spec.name, "name:" + spec.name, spec.scopes, spec.quotas, spec.guards)


@dataclass
class _Entry:
    digest: bytes  # sha256 of the secret
    key: Key
    not_after: float | None  # unix time; None: no end


class KeyRing:
    """Every accepted secret -> its key; rebuilt when the key files change."""

    def __init__(self, auth, filters: set[str] | None = None, clock=time.time):
        """`auth`: the config's AuthConfig; `filters`: the guard filters keys may name (None: not checked)."""
        self.auth, self.filters, self.clock = auth, filters, clock
        self.reload_errors = 0  # file changes that could not be read or parsed (the old keys stayed)
        self._seen: dict[str, bytes | None] = {}  # file path -> its bytes at the last build
        self._checked = clock()
        self._entries: list[_Entry] = self._build()

    @property
    def required(self) -> bool:
        return bool(self._entries) or bool(self.auth.enabled)

    def find(self, token: bytes) -> Key | None:
        """The key whose secret `token` is (every secret compared, in constant time each), or None."""
        given = hashlib.sha256(token).digest()
        now, found = self.clock(), None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, given) and (entry.not_after is None or now < entry.not_after):
                found = entry.key
        return found

    def keys(self) -> list[Key]:
        return list({e.key.name: e.key for e in self._entries}.values())

    # ---- reloading ----
    def refresh(self) -> bool:
        """Re-read the key files if `reload_interval_s` passed and they changed; True when the ring was rebuilt."""
        now = self.clock()
        if now - self._checked < self.auth.reload_interval_s:
            return False
        self._checked = now
        if all(_read(path) == data for path, data in self._seen.items()):
            return False
        try:
            fresh = self._build()
        except (ConfigError, OSError) as err:
            self.reload_errors += 1
            log.error("the API keys were not reloaded (the old ones stay valid): %s", err)
            return False
        self._entries = fresh + self._graced(fresh, now)
        log.info("API keys reloaded: %d keys", len({e.key.name for e in fresh}))
        return True

    def _graced(self, fresh: list[_Entry], now: float) -> list[_Entry]:
        """Secrets the new files dropped, valid for `rotation_grace_s` more (or their own not_after if sooner)."""
        kept = {e.digest for e in fresh}
        until = now + self.auth.rotation_grace_s
        return [_Entry(e.digest, e.key, min(until, e.not_after or until)) for e in self._entries
                if e.digest not in kept and (e.not_after is None or e.not_after > now)]

    def _build(self) -> list[_Entry]:
        auth = self.auth
        self._seen = {path: _read(path) for path in (auth.api_keys_file, auth.keys_file) if path}
        specs = list(auth.keys) + (_keys_file(auth.keys_file, self._seen[auth.keys_file]) if auth.keys_file else [])
        try:
            check_unique(specs)
        except ValueError as err:
            raise ConfigError(f"auth.keys and auth.keys_file together: {err}") from None
        for spec in specs:
            unknown = sorted(set(spec.guards.names()) - self.filters) if self.filters is not None else []
            if unknown:
                raise ConfigError(f"key {spec.name!r} names guard filters {unknown} that guards.filters does not "
                                  f"define ({sorted(self.filters)})")
        entries = [_Entry(bytes.fromhex(s.sha256), named_key(spec), s.not_after) for spec in specs
                   for s in spec.secrets]
        for secret in auth.resolve():
            digest, key = flat_key(secret)
            entries.append(_Entry(digest, key, None))
        if auth.keys_file and not specs:
            raise ConfigError(f"auth.keys_file {auth.keys_file!r} holds no keys; refusing to serve without them")
        return entries


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _keys_file(path: str, data: bytes | None) -> list[KeySpec]:
    if data is None:
        raise ConfigError(f"auth.keys_file {path!r} cannot be read")
    try:
        parsed = json.loads(data) if path.endswith(".json") else yaml.safe_load(data)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"auth.keys_file {path!r} is not valid YAML/JSON: {err}") from None
    try:
        return KeysFile.model_validate(parsed if parsed is not None else {}).keys
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"auth.keys_file {path!r}: {problems}") from None


def new_key_entry(name: str) -> tuple[str, dict]:
    """A fresh random key and its `keys` entry (the plaintext is shown once, never stored)."""
    secret = "sk-" + os.urandom(24).hex()
    return secret, {"name": name, "secrets": [{"sha256": hashlib.sha256(secret.encode()).hexdigest()}]}
