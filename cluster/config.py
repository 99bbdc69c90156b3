"""The application config: one typed, validated file that drives `gptoss serve`, `serve run`/`serve deploy` and KubeRay.

Flow: YAML or JSON file -> `load_config` -> `AppConfig` (pydantic models, strict: every field typed and ranged;
all problems reported at once, each named by its YAML path, e.g. `models[0].engine.max_num_seqs`) ->
`cluster.app.build_app` makes the Serve application, and `serve_config` emits the Ray Serve config
(`applications: [...]`) that KubeRay's `serveConfigV2` holds. Each field's `description` is its documentation:
`gptoss serve --print-default-config` prints them all, and `chart_config_schema()` is the JSON schema of the Helm
chart's `config` block (helm/gptoss-serve/values.schema.json; a test keeps the two equal).
"""

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from cluster.audit import AuditConfig
from cluster.guards.config import GuardsConfig
from cluster.keys import KeySpec, check_unique
from cluster.quota import QuotasConfig
from cluster.responses.config import ResponsesConfig
from cluster.sections import ConfigError, Section, doc
from cluster.tools.config import ToolsConfig
from engine.config import DTYPES, CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, StructuredConfig
from engine.config import ParallelConfig as EngineParallel

REASONING_EFFORTS = ("low", "medium", "high")
IMPORT_PATH = "cluster.app:build_app"  # what `serve run` / serveConfigV2 import
CHART_OWNED = ("http", "auth", "grpc", "models")  # config keys the Helm chart writes from its own values
SERVE_CHART_OWNED = ("name", "path", "dtype", "device", "num_gpus", "num_cpus", "parallel", "num_replicas")
GRPC_CHART_OWNED = ("enabled", "host", "port", "replicas", "node_resource", "tls_cert_file", "tls_key_file",
                    "tls_client_ca_file")
_LEAD = re.compile(r"^([a-z_]+)\b")  # the field a validator's message starts with
CONTROL_ROUTE_HEADROOM = 32  # ingress slots beyond the generation capacity: /v1/models, /health, /metrics


# -- per-area sections ---------------------------------------------------------------------------------------------


class HttpConfig(Section):
    host: str = doc("127.0.0.1", "address the HTTP proxy binds; 0.0.0.0 exposes it (set it in a pod)", min_length=1)
    port: int = doc(8000, "HTTP port of the OpenAI-compatible API", ge=1, le=65535)
    route_prefix: str = doc("/", "path prefix of the application (the API lives under PREFIX/v1/...)",
                            pattern=r"^/")


class AuthConfig(Section):
    """API keys. Flat keys (api_keys*) may use everything; named keys (keys, keys_file: cluster/keys.py) have a name,
    scopes, quotas and guard chains, and only the SHA-256 of their secret is written down."""

    api_keys: list[str] = doc([], "literal API keys (prefer api_keys_env or api_keys_file: a config file leaks)")
    api_keys_env: str | None = doc(None, "environment variable holding comma-separated API keys (read on the node)")
    api_keys_file: str | None = doc(None, "file with one API key per line (read on the node, e.g. a mounted secret; "
                                          "re-read when it changes)")
    keys: list[KeySpec] = doc([], "named keys: {name, secrets: [{sha256, not_after}], scopes, quotas, guards} "
                                  "(`gptoss keys new NAME` prints one)")
    keys_file: str | None = doc(None, "YAML or JSON file {keys: [...]} of named keys (a mounted Secret), re-read "
                                      "without a restart when it changes")
    reload_interval_s: float = doc(5.0, "how often the key files are checked for changes", gt=0)
    rotation_grace_s: float = doc(3600.0, "a secret removed from a key file stays valid this long after the reload "
                                          "that removed it (old and new keys both work while clients move)", ge=0)

    @model_validator(mode="after")
    def _unique_keys(self) -> "AuthConfig":
        check_unique(self.keys)
        return self

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            if len(key) < 8 or key != key.strip():
                raise ValueError(f"[{i}] (hidden) must be at least 8 characters without surrounding spaces")
        return keys

    def resolve(self) -> list[str]:
        """Every configured key; a named env var or file that is missing is an error (never 'no auth')."""
        keys = list(self.api_keys)
        if self.api_keys_env:
            if self.api_keys_env not in os.environ:
                raise ConfigError(f"auth.api_keys_env names {self.api_keys_env!r}, which is not set")
            keys += [k.strip() for k in os.environ[self.api_keys_env].split(",") if k.strip()]
        if self.api_keys_file:
            try:
                keys += [k.strip() for k in Path(self.api_keys_file).read_text().splitlines() if k.strip()]
            except OSError as err:
                raise ConfigError(f"auth.api_keys_file {self.api_keys_file!r} cannot be read: {err}") from None
        if (self.api_keys_env or self.api_keys_file) and not keys:
            raise ConfigError("auth names a key source but it holds no keys; refusing to serve without auth")
        return keys

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.api_keys_env or self.api_keys_file or self.keys or self.keys_file)


class LimitsConfig(Section):
    max_body_bytes: int = doc(4 << 20, "largest request body accepted; larger gets 413", ge=1024)
    request_timeout_s: float = doc(600.0, "deadline of one request from its arrival at the front door to its last "
                                          "byte; past it: 408 (HTTP) or DEADLINE_EXCEEDED (gRPC)", gt=0)
    max_queued_requests: int = doc(
        256, "requests per model that may wait at the router for a replica slot; past it: 503 with Retry-After "
             "(-1 = unbounded)", ge=-1)
    retry_after_s: int = doc(1, "Retry-After seconds sent with 429 and 503", ge=0)

    @field_validator("max_queued_requests")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_queued_requests must be >= 1 or -1 (unbounded)")
        return value


class GrpcConfig(Section):
    """The gRPC gateway (proto/gptoss/v1, cluster/grpc/): API keys are auth's, the longest deadline limits'."""

    enabled: bool = doc(False, "serve the gRPC API (gptoss.v1.Inference, health, reflection) from a gateway")
    host: str = doc("127.0.0.1", "address the gateway binds; 0.0.0.0 exposes it (set it in a pod, with TLS)",
                    min_length=1)
    port: int = doc(50051, "gRPC port", ge=1, le=65535)
    replicas: int = doc(1, "gateway replicas (each binds host:port on its node)", ge=1)
    replicas_per_node: int = doc(1, "most gateway replicas on one node; above 1 they share host:port through "
                                    "SO_REUSEPORT (the kernel spreads new connections; when one dies the others keep "
                                    "taking them); 1: SO_REUSEPORT off, a taken port fails", ge=1)
    tls_cert_file: str | None = doc(None, "PEM certificate chain of the server: TLS when set (with tls_key_file)")
    tls_key_file: str | None = doc(None, "PEM private key of tls_cert_file")
    tls_client_ca_file: str | None = doc(None, "PEM CA bundle: clients must present a certificate it signed (mTLS)")
    max_message_bytes: int = doc(4 << 20, "largest request or response message; larger fails RESOURCE_EXHAUSTED",
                                 ge=1024)
    max_concurrent_streams: int = doc(1024, "Generate/Chat calls in flight per gateway replica; past it: "
                                            "RESOURCE_EXHAUSTED with trailing metadata retry-after-ms", ge=1)
    requests_per_s: float = doc(0.0, "per API key: gRPC calls per second across every gateway replica (a bucket in "
                                      "the quota ledger, cluster/quota.py; 0 = unlimited)", ge=0)
    request_burst: int = doc(0, "per API key: calls allowed at once above the rate (0: one second's worth)", ge=0)
    tokens_per_s: float = doc(0.0, "per API key: prompt + generated tokens per second of gRPC calls across every "
                                   "gateway replica (the quota ledger; 0 = unlimited); a call is admitted while the "
                                   "key's bucket is not in debt", ge=0)
    token_burst: int = doc(0, "per API key: tokens allowed at once above the rate (0: one second's worth)", ge=0)
    retry_after_ms: int = doc(1000, "retry hint sent with RESOURCE_EXHAUSTED when no better one is known", ge=0)
    reflection: bool = doc(True, "serve gRPC server reflection (grpcurl, grpcui); needs the API key like the API")
    node_resource: str | None = doc(None, "a custom Ray resource each gateway replica takes 0.001 of, so gateways run "
                                          "only on nodes that have it (the Helm chart gives it to the head pod, which "
                                          "its gRPC Service selects); None: any node", min_length=1)

    @model_validator(mode="after")
    def _tls_files(self) -> "GrpcConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_key_file and tls_cert_file must be set together (both or neither)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file (server TLS)")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def engine_fields(part, names: tuple[str, ...] | None = None, docs: dict[str, str] | None = None) -> dict:
    """pydantic field definitions for the fields `names` of the engine config part `part` (engine.config), with the
    engine's type, default, documentation and range (`engine.config.setting`): the YAML embeds the engine's settings
    rather than declaring them again (every field when `names` is None). `docs` adds what a field means for a
    deployment."""
    declared = {f.name: f for f in dataclasses.fields(part)}
    out = {}
    for name in names or declared:
        f, limits = declared[name], declared[name].metadata
        kind = Literal[limits["choices"]] if "choices" in limits else f.type
        if "choices" in limits and f.default is None:
            kind = kind | None
        text = limits["doc"] + (f"; {docs[name]}" if docs and name in docs else "")
        out[name] = (kind, doc(f.default, text, **{k: limits[k] for k in ("ge", "gt", "le") if k in limits}))
    return out


class _Parallel(Section):
    """One replica's engine over several ranks (engine.parallel; docs/parallelism.md). With more than one rank the
    replica process only schedules; the ranks hold the weights."""

    cpus_per_rank: float = doc(1.0, "ray backend: CPUs in each rank's bundle", gt=0)

    @model_validator(mode="after")
    def _engine_accepts(self) -> "_Parallel":
        EngineParallel(**self.engine_kwargs(always=True))  # its ValueError names the field
        return self

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    @property
    def ray_ranks(self) -> bool:
        """Whether the ranks are Ray actors in the replica's placement group."""
        return self.world_size > 1 and self.distributed_executor_backend == "ray"

    def engine_kwargs(self, always: bool = False) -> dict:
        if self.world_size == 1 and not always:
            return {}
        return self.model_dump(exclude={"cpus_per_rank"})


ParallelSection = create_model(
    "ParallelSection", __base__=_Parallel, __module__=__name__,
    **engine_fields(EngineParallel, docs={
        "distributed_executor_backend": "mp ranks run beside the replica on its node and use the GPUs it reserves "
                                        "(num_gpus = ranks); ray ranks take one bundle each with cpus_per_rank CPUs "
                                        "and, on cuda, one GPU, may span nodes, and the replica reserves none "
                                        "(num_gpus = 0)",
        "collective_timeout_s": "Serve then replaces the replica"}))
ParallelSection.__doc__ = _Parallel.__doc__


class _Engine(Section):
    """Passed to engine.AsyncLLM as keyword arguments: the engine's own settings (engine.config.EngineConfig), per
    replica."""

    @model_validator(mode="after")
    def _engine_accepts(self) -> "_Engine":
        EngineConfig.from_kwargs(model="-", **self.model_dump())  # its ValueError names the field
        return self


EngineSettings = create_model(
    "EngineSettings", __base__=_Engine, __module__=__name__,
    **engine_fields(ModelConfig, ("max_model_len", "backend", "enforce_eager")),
    **engine_fields(CacheConfig),
    **engine_fields(SchedulerConfig),
    **engine_fields(StructuredConfig))
EngineSettings.__doc__ = _Engine.__doc__


class AutoscalingConfig(Section):
    """Ray Serve's autoscaling_config, on the number of ongoing requests per replica."""

    min_replicas: int = doc(1, "fewest replicas (>= 1: a cold start takes a model load)", ge=1)
    max_replicas: int = doc(1, "most replicas", ge=1)
    initial_replicas: int | None = doc(None, "replicas at deploy (None: min_replicas)", ge=1)
    target_ongoing_requests: float = doc(16.0, "ongoing requests per replica the autoscaler aims for", gt=0)
    upscale_delay_s: float = doc(30.0, "load must stay above target this long before adding replicas", ge=0)
    downscale_delay_s: float = doc(600.0, "load must stay below target this long before removing replicas", ge=0)
    metrics_interval_s: float = doc(10.0, "how often replicas report their load", gt=0)
    look_back_period_s: float = doc(30.0, "window the load is averaged over", gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"initial_replicas ({self.initial_replicas}) must be in [min_replicas, max_replicas]")
        return self

    def to_serve(self) -> dict:
        return self.model_dump(exclude_none=True)


class RoutingConfig(Section):
    prefix_affinity: bool = doc(True, "send a request to the replica that served its prompt prefix (else least "
                                      "loaded); False: Ray Serve's power-of-two-choices")
    prefix_chunk_chars: int = doc(256, "prompt characters per prefix-index entry", ge=1)
    imbalance_threshold: int = doc(8, "prefer the prefix replica only while it has at most this many more ongoing "
                                      "requests than the least loaded", ge=0)
    max_index_entries: int = doc(100_000, "prefix-index entries kept per router (least recently used go first)", ge=1)
    hash_chunks: int = doc(2, "leading prompt chunks the consistent-hash ring keys on: a prefix no router has seen "
                              "goes to its ring replica, so every ingress and gateway agree", ge=1)
    max_kv_cache_usage: float = doc(0.95, "a replica reporting more KV-cache usage than this loses its affinity "
                                          "preference (the least loaded takes the request)", gt=0, le=1)
    stats_period_s: float = doc(1.0, "how often each replica reports its load (queue, KV usage) to the routers", gt=0)


class ModelSpec(Section):
    name: str = Field(description="the model name clients send (`model` in the request)", min_length=1,
                      pattern=r"^[^/#]+$")
    path: str = Field(description="checkpoint directory (HF or original/ layout), readable on every node",
                      min_length=1)
    dtype: Literal[DTYPES] = doc(ModelConfig.dtype, "weights and activations: float32 or bfloat16")
    device: Literal["cpu", "cuda"] | None = doc(None, "cpu or cuda (None: cuda when the replica has a GPU)")
    num_cpus: float = doc(1.0, "CPUs reserved per replica (also its torch threads on CPU)", ge=0)
    num_gpus: float = doc(0.0, "GPUs reserved by the replica process (with the mp backend: its ranks' GPUs, "
                               "tensor_parallel_size x data_parallel_size; with ray: 0)", ge=0)
    parallel: ParallelSection = doc(ParallelSection, "per-replica parallelism")
    engine: EngineSettings = doc(EngineSettings, "engine settings, per replica")
    num_replicas: int = doc(1, "fixed replica count (ignored when autoscaling is set)", ge=1)
    autoscaling: AutoscalingConfig | None = doc(None, "autoscale between min and max replicas (None: fixed)")
    max_ongoing_requests: int | None = doc(
        None, "requests Ray Serve sends one replica at once (engine running + waiting); None: twice what the engine "
              "batches (engine.max_num_seqs x data_parallel_size), so the engine's batch stays full. It may not be "
              "set below what the engine batches (lower engine.max_num_seqs instead)", ge=1)
    graceful_shutdown_timeout_s: float = doc(30.0, "a stopping replica (downscale, redeploy, Ctrl-C) takes no new "
                                                   "requests and lets its in-flight ones finish this long", ge=0)
    health_check_period_s: float = doc(10.0, "how often Serve checks the engine's health", gt=0)
    max_surge_percent: int = doc(0, "rolling upgrade: extra replicas (percent of the target count) Serve starts "
                                    "before it stops old ones, so capacity does not dip while new replicas load "
                                    "(needs room for them on the cluster); 0: an old replica stops as a new one "
                                    "starts", ge=0, le=100)
    routing: RoutingConfig = doc(RoutingConfig, "routing across this model's replicas")
    default_reasoning_effort: Literal["low", "medium", "high"] = doc("medium",
                                                                     "reasoning_effort when a request gives none")
    default_max_tokens: int | None = doc(None, "max_tokens when a request gives none (None: up to the context)", ge=1)
    max_queue_wait_s: float | None = doc(None, "admission control: a replica refuses new requests (429 with "
                                               "Retry-After; the front door tries another replica once) while a new "
                                               "one would wait longer than this for its first token (the time since "
                                               "the front door took it, plus the longer of the oldest waiting "
                                               "request's wait and the queue at the recent rate of first tokens), so under overload the admitted keep their time to "
                                               "first token and the rest are told to retry (None: all queue)", gt=0)

    @model_validator(mode="after")
    def _resources(self) -> "ModelSpec":
        world = self.parallel.world_size
        if self.parallel.ray_ranks:
            if self.num_gpus != 0:
                raise ValueError(f"num_gpus must be 0 with distributed_executor_backend ray (each rank's bundle "
                                 f"holds its GPU), got {self.num_gpus}")
            if self.num_cpus <= 0:
                raise ValueError("num_cpus must be > 0 with distributed_executor_backend ray (the replica's own "
                                 "bundle cannot be empty)")
        elif world > 1 and (self.device == "cuda" or self.num_gpus) and self.num_gpus != world:
            raise ValueError(f"num_gpus must be {world} (tensor_parallel_size x data_parallel_size): mp ranks use "
                             f"the GPUs the replica reserves, got {self.num_gpus}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.batch_capacity:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= what the engine batches "
                             f"({self.batch_capacity} = engine.max_num_seqs x data_parallel_size): a lower cap hides "
                             "part of the batch; lower engine.max_num_seqs instead")
        return self

    @property
    def batch_capacity(self) -> int:
        """Requests one replica's engine runs at once."""
        return self.engine.max_num_seqs * self.parallel.data_parallel_size

    @property
    def replica_capacity(self) -> int:
        """Requests Serve sends one replica at once."""
        return self.max_ongoing_requests or 2 * self.batch_capacity

    @property
    def max_replica_count(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.num_replicas

    def engine_kwargs(self) -> dict:
        """Keyword arguments for AsyncLLM."""
        return {"model": self.path, "dtype": self.dtype, "device": self.device, **self.engine.model_dump(),
                **self.parallel.engine_kwargs()}

    def placement_group_bundles(self) -> list[dict] | None:
        """Ray backend: the replica's own bundle, then one per rank (Serve reserves them all before it starts the
        replica; the engine's RayExecutor places its rank actors in the last ones)."""
        if not self.parallel.ray_ranks:
            return None
        rank = {"CPU": self.parallel.cpus_per_rank, **({"GPU": 1} if self.device == "cuda" else {})}
        return [{"CPU": self.num_cpus}] + [dict(rank) for _ in range(self.parallel.world_size)]


class AppConfig(Section):
    models: list[ModelSpec] = doc([], "the models served; clients pick one by name", min_length=1)
    name: str = doc("gptoss", "the Ray Serve application name", min_length=1)
    http: HttpConfig = doc(HttpConfig, "where the API listens")
    auth: AuthConfig = doc(AuthConfig, "API keys: when any is configured, every route but /health needs one")
    limits: LimitsConfig = doc(LimitsConfig, "request limits")
    grpc: GrpcConfig = doc(GrpcConfig, "the gRPC gateway (off unless enabled)")
    responses: ResponsesConfig = doc(ResponsesConfig, "stored responses (/v1/responses with store, "
                                                      "previous_response_id, background)")
    tools: ToolsConfig = doc(ToolsConfig, "built-in tools the replicas run for /v1/responses (python, browser, MCP)")
    quotas: QuotasConfig = doc(QuotasConfig, "the quota ledger that holds every key's quotas for all front doors")
    audit: AuditConfig = doc(AuditConfig, "the audit log: one hash-chained record per request")
    guards: GuardsConfig = doc(GuardsConfig, "guard filters on requests (input) and answers (output)")
    ingress_replicas: int = doc(1, "replicas of the HTTP ingress (auth, validation, routing)", ge=1)
    ingress_max_ongoing_requests: int | None = doc(
        None, "requests one ingress replica handles at once (streams included); None: enough for every model's "
              "replicas at their most (max replicas x max_ongoing_requests) plus their router queues "
              "(limits.max_queued_requests), shared by the ingress replicas. It may not be set lower than that: "
              "the ingress would queue requests the replicas could already run", ge=1)
    metrics_push_interval_s: float = doc(1.0, "how often each replica and front door pushes its metrics (and learns "
                                              "whether the cluster is draining)", gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "AppConfig":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models[].name must be unique, got {dupes} more than once")
        self.guards.check_models(names)
        for key in self.auth.keys:
            self.guards.check_chain(key.guards, f"auth.keys[{key.name}].guards")
        redactor = self.audit.redact_with
        regex = sorted(n for n, f in self.guards.filters.items() if f.type == "regex")
        if redactor is not None and redactor not in regex:
            raise ValueError(f"audit.redact_with {redactor!r} must name a regex filter of guards.filters "
                             f"(regex filters: {regex})")
        given, needed = self.ingress_max_ongoing_requests, self.ingress_capacity_needed()
        if given is not None and needed is not None and given < needed:
            raise ValueError(f"ingress_max_ongoing_requests ({given}) must be >= {needed}: the models' replicas "
                             "and router queues take that many requests per ingress replica at once")
        return self

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def ingress_capacity_needed(self) -> int | None:
        """Generation requests one ingress replica must hold at once so that it never queues before the
        replicas do (None: unbounded, some router queue is unbounded)."""
        if self.limits.max_queued_requests == -1:
            return None
        total = sum(m.max_replica_count * m.replica_capacity + self.limits.max_queued_requests for m in self.models)
        return math.ceil(total / self.ingress_replicas)

    def ingress_max_ongoing(self) -> int:
        """The ingress deployment's max_ongoing_requests."""
        if self.ingress_max_ongoing_requests is not None:
            return self.ingress_max_ongoing_requests
        needed = self.ingress_capacity_needed()
        return (needed if needed is not None else 100_000) + CONTROL_ROUTE_HEADROOM

    @property
    def graceful_shutdown_timeout_s(self) -> float:
        """The longest drain any model asks for (front doors wait that long for their streams)."""
        return max(spec.graceful_shutdown_timeout_s for spec in self.models)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# -- loading ---------------------------------------------------------------------------------------------------------


def load_config(source: str | Path | dict) -> AppConfig:
    """An AppConfig from a YAML/JSON file path or an already-parsed mapping."""
    if isinstance(source, dict):
        return validate(AppConfig, source)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {err}") from None
    return validate(AppConfig, data if data is not None else {})


def validate(cls: type[Section], data, path: str = ""):
    """`cls` built from plain data; every problem in one ConfigError, one line each, led by its YAML path."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError("\n".join(_problem(e, path, cls) for e in err.errors())) from None


def _problem(error: dict, root: str, cls: type[Section]) -> str:
    where = _path(error["loc"], root)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key; known keys here: {_known_keys(cls, error['loc'][:-1])}"
    if error["type"] == "missing":
        return f"{where}: missing required key"
    if error["type"] in ("value_error", "assertion_error"):
        lead = _LEAD.match(message)
        section = _section_at(cls, error["loc"])
        if where and lead and section is not None and lead[1] in section.model_fields:
            return f"{where}.{message}"  # a check of the section that names its field first
        if message.startswith("["):
            return f"{where}{message}"  # names an item of the list at `where`
        return f"{where}: {message}" if where else message
    return f"{where}: {message} (got {error.get('input')!r})"


def _path(loc: tuple, root: str = "") -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_keys(cls: type[Section], loc: tuple) -> list[str]:
    section = _section_at(cls, loc)
    return sorted(section.model_fields) if section is not None else []


def _section_at(cls: type[Section], loc: tuple) -> type[Section] | None:
    """The Section class at `loc` below `cls` (None where loc leads to a plain value)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        cls = _section_of(field.annotation) if field is not None else None
        if cls is None:
            return None
    return cls


def _section_of(annotation) -> type[Section] | None:
    """The Section class inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def serve_config(config: AppConfig) -> dict:
    """Ray Serve's config-file shape (`serve deploy FILE`, KubeRay `serveConfigV2`) for this application.

    The whole AppConfig travels inline as the builder's `args`, so the cluster needs no config file of its own.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.http.host, "port": config.http.port},
        "applications": [{
            "name": config.name,
            "route_prefix": config.http.route_prefix,
            "import_path": IMPORT_PATH,
            "args": {"config": config.to_dict()},
        }],
    }


# -- documentation and schema ----------------------------------------------------------------------------------------


def default_config_yaml() -> str:
    """Every field with its default and documentation, as a commented YAML file (one model shown)."""
    lines: list[str] = []
    _document(AppConfig, lines, indent="")
    return "\n".join(lines) + "\n"


def _document(cls: type[Section], lines: list[str], indent: str) -> None:
    for name, field in cls.model_fields.items():
        lines.append(f"{indent}# {field.description or ''}")
        inner = _section_of(field.annotation)
        if name == "models":
            lines.append(f"{indent}models:")
            lines.append(f"{indent}  -")
            _document(ModelSpec, lines, indent + "    ")
        elif inner is not None:
            lines.append(f"{indent}{name}:")
            _document(inner, lines, indent + "  ")
        elif field.is_required():
            lines.append(f"{indent}{name}:  # required")
        else:
            default = field.get_default(call_default_factory=True)
            lines.append(f"{indent}{name}: {json.dumps(default)}")


def chart_schemas() -> tuple[dict[str, dict], dict]:
    """The parts of the Helm chart's values that are this config, as JSON Schema (draft-07, as values.schema.json):
    ({"config": AppConfig, "serve": ModelSpec, "grpc.settings": GrpcConfig}, their definitions, named
    `config.<Section>` in the file's `definitions`). The keys the chart writes itself are left open here (the
    chart's templates refuse them with a message saying where they come from)."""
    parts, defs = {}, {}
    for name, cls, owned in (("config", AppConfig, CHART_OWNED), ("serve", ModelSpec, SERVE_CHART_OWNED),
                             ("grpc.settings", GrpcConfig, GRPC_CHART_OWNED)):
        schema = cls.model_json_schema(ref_template="#/definitions/config.{model}")
        defs.update({f"config.{k}": d for k, d in schema.pop("$defs", {}).items()})
        for key in owned:
            schema["properties"][key] = {"description": "written by the chart; setting it fails with a message "
                                                        "that says where it comes from"}
        schema.pop("required", None)
        schema["title"] = f"{name}: cluster/config.py {cls.__name__}, less the keys the chart writes"
        parts[name] = schema
    used = _refs(parts, defs)
    return parts, {name: d for name, d in sorted(defs.items()) if name in used}


def write_chart_schema(path: str | Path) -> None:
    """Put `chart_schemas()` into the chart's values.schema.json (`make chart-schema`)."""
    path = Path(path)
    values = json.loads(path.read_text())
    parts, defs = chart_schemas()
    values["properties"]["config"] = parts["config"]
    values["definitions"]["model"]["properties"]["serve"] = parts["serve"]
    values["properties"]["grpc"]["properties"]["settings"] = parts["grpc.settings"]
    kept = {name: d for name, d in values["definitions"].items() if not name.startswith("config.")}
    values["definitions"] = {**kept, **defs}
    path.write_text(json.dumps(values, indent=2) + "\n")


def _refs(node, defs: dict, seen: set | None = None) -> set:
    """Names of the definitions reachable from `node`."""
    seen = set() if seen is None else seen
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        name = ref.removeprefix("#/definitions/")
        if name != ref and name not in seen:
            seen.add(name)
            _refs(defs[name], defs, seen)
        for value in node.values():
            _refs(value, defs, seen)
    elif isinstance(node, list):
        for value in node:
            _refs(value, defs, seen)
    return seen


if __name__ == "__main__":  # python -m cluster.config values.schema.json
    import sys

    write_chart_schema(sys.argv[1])
