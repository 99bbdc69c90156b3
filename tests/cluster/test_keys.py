"""Named keys, exactly (no cluster): lookup by hashed secret, flat keys as unrestricted named keys, expiry, reloads
of a key file, rotation with a grace period, and the errors a bad file or config gives."""

import hashlib

import pytest
import yaml

from cluster.config import AuthConfig, load_config, validate
from cluster.keys import ANONYMOUS, KeyRing, new_key_entry
from cluster.sections import ConfigError

MODEL = {"name": "m", "path": "/models/m"}


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def entry(name: str, *keys: str, **more) -> dict:
    return {"name": name, "secrets": [{"sha256": sha(k)} for k in keys], **more}


def ring(tmp_path=None, file_keys=None, clock=None, **auth) -> KeyRing:
    if file_keys is not None:
        path = tmp_path / "keys.yaml"
        path.write_text(yaml.safe_dump({"keys": file_keys}))
        auth["keys_file"] = str(path)
    return KeyRing(validate(AuthConfig, {"reload_interval_s": 1, "rotation_grace_s": 60, **auth}),
                   clock=clock or Clock())


def test_named_keys_are_found_by_their_secret_and_flat_keys_are_unrestricted():
    keys = ring(keys=[entry("team-a", "secret-a-0123", scopes={"models": ["m"]})], api_keys=["flat-key-0123"])
    team = keys.find(b"secret-a-0123")
    assert (team.name, team.identity, team.scopes.models) == ("team-a", "name:team-a", ["m"])
    flat = keys.find(b"flat-key-0123")
    assert flat.name == "key-" + sha("flat-key-0123")[:8] and flat.scopes.unrestricted
    assert flat.identity == "key:" + sha("flat-key-0123")[:16]  # as before named keys: stored responses stay its own
    assert keys.find(b"nope") is None and keys.find(b"") is None and keys.required
    assert not ring().required and ANONYMOUS.scopes.unrestricted


def test_a_secret_stops_at_its_not_after():
    clock = Clock(1000.0)
    keys = ring(clock=clock, keys=[{"name": "a", "secrets": [{"sha256": sha("old-secret-01"), "not_after": 1500.0},
                                                             {"sha256": sha("new-secret-01")}]}])
    assert keys.find(b"old-secret-01").name == "a" and keys.find(b"new-secret-01").name == "a"
    clock.now = 1500.0
    assert keys.find(b"old-secret-01") is None and keys.find(b"new-secret-01").name == "a"


def test_a_key_file_is_reread_and_a_rotated_secret_keeps_working_for_the_grace_period(tmp_path):
    clock = Clock()
    keys = ring(tmp_path, [entry("a", "first-secret-1")], clock)
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry("a", "second-secret-2"), entry("b", "other-secret-3")]}))
    assert not keys.refresh()  # checked at most every reload_interval_s
    clock.now += 1
    assert keys.refresh()
    assert {keys.find(s.encode()).name for s in ("first-secret-1", "second-secret-2", "other-secret-3")} == {"a", "b"}
    clock.now += 59.9
    assert keys.find(b"first-secret-1").name == "a"  # still inside the grace period
    clock.now += 0.2
    assert keys.find(b"first-secret-1") is None and keys.find(b"second-secret-2").name == "a"


def test_a_broken_key_file_keeps_the_old_keys(tmp_path):
    clock = Clock()
    keys = ring(tmp_path, [entry("a", "first-secret-1")], clock)
    (tmp_path / "keys.yaml").write_text("keys: [{name: a, secrets: [{sha256: not-hex}]}]")
    clock.now += 5
    assert not keys.refresh() and keys.reload_errors == 1
    assert keys.find(b"first-secret-1").name == "a"


def test_bad_keys_are_refused_naming_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="keys\\[\\].name must be unique"):
        load_config({"models": [MODEL], "auth": {"keys": [entry("a", "k1-0123456"), entry("a", "k2-0123456")]}})
    with pytest.raises(ConfigError, match="auth.keys\\[0\\].secrets\\[0\\].sha256"):
        load_config({"models": [MODEL], "auth": {"keys": [{"name": "a", "secrets": [{"sha256": "abc"}]}]}})
    with pytest.raises(ConfigError, match="names filters \\['nope'\\]"):
        load_config({"models": [MODEL], "auth": {"keys": [entry("a", "k1-0123456", guards={"input": ["nope"]})]}})
    with pytest.raises(ConfigError, match="holds no keys"):
        ring(tmp_path, [])
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry("a", "k1-0123456", guards={"output": ["pii"]})]}))
    with pytest.raises(ConfigError, match="guard filters \\['pii'\\]"):
        KeyRing(validate(AuthConfig, {"keys_file": str(path)}), filters=set())


def test_new_key_entries_hold_only_the_digest():
    secret, made = new_key_entry("ops")
    keys = ring(keys=[made])
    assert keys.find(secret.encode()).name == "ops" and secret not in yaml.safe_dump(made)
