"""The `responses:` section of the cluster config: where stored responses live, how long, and how much per key."""

import os
from pathlib import Path

from pydantic import model_validator

from cluster.sections import ConfigError, Section, doc
from engine.paths import cache_root

SQLITE_NAME = "responses.sqlite3"  # under the cache directory when no store_path is given


class ResponsesConfig(Section):
    """Stored responses (`store`, `previous_response_id`, `background`, GET/DELETE /v1/responses/{id})."""

    store: bool = doc(True, "a request's `store` when it sends none (true, as OpenAI; false where rules forbid "
                            "keeping conversations unless a client asks)")
    allow_store: bool = doc(True, "false: nothing is ever stored; store: true, background and previous_response_id "
                                  "are refused (400)")
    store_dsn: str | None = doc(None, "PostgreSQL connection string (postgresql://...): every front door on every node "
                                      "shares the conversations; prefer store_dsn_env (a config file leaks)")
    store_dsn_env: str | None = doc(None, "environment variable holding the PostgreSQL connection string (the Helm "
                                          "chart sets it from a Secret)", min_length=1)
    store_path: str | None = doc(None, "SQLite file when no DSN is given (None: responses.sqlite3 in the cache "
                                       "directory, $GPTOSS_CACHE_DIR or ~/.cache/gptoss-serve); one node only")
    store_ttl: float = doc(30 * 86400.0, "seconds a stored response is kept after it is created (0: until deleted)",
                           ge=0)
    max_store_bytes_per_key: int = doc(256 << 20, "stored bytes per API key; past it a request that would store is "
                                                  "refused (400 naming store) until the key deletes some", ge=1024)
    background_timeout_s: float = doc(3600.0, "deadline of a background response (limits.request_timeout_s is the "
                                              "foreground one)", gt=0)
    background_lease_s: float = doc(30.0, "a background run renews its claim this often x 3; a run whose claim lapsed "
                                          "(its front door stopped) reads as failed", gt=0)

    @model_validator(mode="after")
    def _one_dsn(self) -> "ResponsesConfig":
        if self.store_dsn is not None and self.store_dsn_env is not None:
            raise ValueError("store_dsn and store_dsn_env are exclusive: give one PostgreSQL connection string")
        return self

    def dsn(self) -> str | None:
        """The PostgreSQL connection string, or None (SQLite); a named env var that is unset is an error."""
        if self.store_dsn_env is None:
            return self.store_dsn
        value = os.environ.get(self.store_dsn_env, "").strip()
        if not value:
            raise ConfigError(f"responses.store_dsn_env names {self.store_dsn_env!r}, which is not set")
        return value

    def sqlite_path(self) -> Path:
        if self.store_path is not None:
            return Path(self.store_path).expanduser()
        return cache_root() / SQLITE_NAME
