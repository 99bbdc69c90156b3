"""The application config: one typed, validated file that drives `gptoss serve`, `serve run`/`serve deploy` and KubeRay.

Flow: YAML or JSON file -> `load_config` -> `AppConfig` (every field checked where it is made; errors name the
field path, the value and what to change) -> `cluster.app.build_app` makes the Serve application, and
`serve_config` emits the Ray Serve config (`applications: [...]`) that KubeRay's `serveConfigV2` holds.
Each field's `doc` metadata is its documentation; `gptoss serve --print-default-config` prints them all.
"""

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REASONING_EFFORTS = ("low", "medium", "high")
IMPORT_PATH = "cluster.app:build_app"  # what `serve run` / serveConfigV2 import


class ConfigError(ValueError):
    """A config value that is missing, of the wrong type or out of range; the message names the field."""


def doc(default, text: str, **kwargs):
    """A dataclass field with its documentation (a list or dict default becomes a factory)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = (lambda d=default: type(d)(d)) if not dataclasses.is_dataclass(default) else type(default)
        return field(default_factory=factory, metadata={"doc": text}, **kwargs)
    return field(default=default, metadata={"doc": text}, **kwargs)


def _check(ok: bool, path: str, value, want: str) -> None:
    if not ok:
        raise ConfigError(f"{path} must be {want}, got {value!r}")


# -- per-area sections ---------------------------------------------------------------------------------------------


@dataclass
class HttpConfig:
    host: str = doc("127.0.0.1", "address the HTTP proxy binds; 0.0.0.0 exposes it (set it in a pod)")
    port: int = doc(8000, "HTTP port of the OpenAI-compatible API")
    route_prefix: str = doc("/", "path prefix of the application (the API lives under PREFIX/v1/...)")

    def validate(self, path: str) -> None:
        _check(0 < self.port < 65536, f"{path}.port", self.port, "in [1, 65535]")
        _check(self.route_prefix.startswith("/"), f"{path}.route_prefix", self.route_prefix, "a path starting with /")


@dataclass
class AuthConfig:
    api_keys: list[str] = doc([], "literal API keys (prefer api_keys_env or api_keys_file: a config file leaks)")
    api_keys_env: str | None = doc(None, "environment variable holding comma-separated API keys (read on the node)")
    api_keys_file: str | None = doc(None, "file with one API key per line (read on the node, e.g. a mounted secret)")

    def validate(self, path: str) -> None:
        for i, key in enumerate(self.api_keys):
            _check(len(key) >= 8 and key == key.strip(), f"{path}.api_keys[{i}]", "<hidden>",
                   "at least 8 characters without surrounding spaces")

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


@dataclass
class LimitsConfig:
    max_body_bytes: int = doc(4 << 20, "largest request body accepted; larger gets 413")
    request_timeout_s: float = doc(600.0, "deadline of one request from arrival to its last byte; past it: 408")
    max_queued_requests: int = doc(
        256, "requests per model that may wait at the router for a replica slot; past it: 503 with Retry-After "
             "(-1 = unbounded)")
    retry_after_s: int = doc(1, "Retry-After seconds sent with 429 and 503")

    def validate(self, path: str) -> None:
        _check(self.max_body_bytes >= 1024, f"{path}.max_body_bytes", self.max_body_bytes, ">= 1024")
        _check(self.request_timeout_s > 0, f"{path}.request_timeout_s", self.request_timeout_s, "> 0")
        _check(self.max_queued_requests == -1 or self.max_queued_requests >= 1, f"{path}.max_queued_requests",
               self.max_queued_requests, ">= 1 or -1 (unbounded)")
        _check(self.retry_after_s >= 0, f"{path}.retry_after_s", self.retry_after_s, ">= 0")


@dataclass
class GrpcConfig:
    """The gRPC gateway (proto/gptoss/v1, cluster/grpc/): API keys are auth's, the longest deadline limits'."""

    enabled: bool = doc(False, "serve the gRPC API (gptoss.v1.Inference, health, reflection) from a gateway")
    host: str = doc("127.0.0.1", "address the gateway binds; 0.0.0.0 exposes it (set it in a pod, with TLS)")
    port: int = doc(50051, "gRPC port")
    replicas: int = doc(1, "gateway replicas, at most one per node (each binds host:port on its node)")
    tls_cert_file: str | None = doc(None, "PEM certificate chain of the server: TLS when set (with tls_key_file)")
    tls_key_file: str | None = doc(None, "PEM private key of tls_cert_file")
    tls_client_ca_file: str | None = doc(None, "PEM CA bundle: clients must present a certificate it signed (mTLS)")
    max_message_bytes: int = doc(4 << 20, "largest request or response message; larger fails RESOURCE_EXHAUSTED")
    max_concurrent_streams: int = doc(256, "Generate/Chat calls in flight per gateway replica; past it: "
                                           "RESOURCE_EXHAUSTED with trailing metadata retry-after-ms")
    requests_per_s: float = doc(0.0, "per API key: calls per second (token bucket; 0 = unlimited)")
    request_burst: int = doc(0, "per API key: calls allowed at once above the rate (0: one second's worth)")
    tokens_per_s: float = doc(0.0, "per API key: prompt + generated tokens per second (0 = unlimited); a call "
                                   "is admitted while the key's bucket is not in debt")
    token_burst: int = doc(0, "per API key: tokens allowed at once above the rate (0: one second's worth)")
    retry_after_ms: int = doc(1000, "retry hint sent with RESOURCE_EXHAUSTED when no better one is known")
    reflection: bool = doc(True, "serve gRPC server reflection (grpcurl, grpcui); needs the API key like the API")
    node_resource: str | None = doc(None, "a custom Ray resource each gateway replica takes 0.001 of, so gateways run "
                                          "only on nodes that have it (the Helm chart gives it to the head pod, which "
                                          "its gRPC Service selects); None: any node")

    def validate(self, path: str) -> None:
        _check(bool(self.host), f"{path}.host", self.host, "an address such as 127.0.0.1")
        _check(self.node_resource is None or bool(self.node_resource), f"{path}.node_resource", self.node_resource,
               "a Ray resource name or null")
        _check(0 < self.port < 65536, f"{path}.port", self.port, "in [1, 65535]")
        _check(self.replicas >= 1, f"{path}.replicas", self.replicas, ">= 1")
        _check((self.tls_cert_file is None) == (self.tls_key_file is None), f"{path}.tls_key_file",
               self.tls_key_file, "set together with tls_cert_file (both or neither)")
        _check(self.tls_client_ca_file is None or self.tls_cert_file is not None, f"{path}.tls_client_ca_file",
               self.tls_client_ca_file, "used with tls_cert_file and tls_key_file (mTLS needs server TLS)")
        _check(self.max_message_bytes >= 1024, f"{path}.max_message_bytes", self.max_message_bytes, ">= 1024")
        _check(self.max_concurrent_streams >= 1, f"{path}.max_concurrent_streams", self.max_concurrent_streams,
               ">= 1")
        for name in ("requests_per_s", "request_burst", "tokens_per_s", "token_burst", "retry_after_ms"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", getattr(self, name), ">= 0")

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class ParallelSection:
    """One replica's engine over several ranks (engine.parallel; docs/parallelism.md). With more than one rank the
    replica process only schedules; the ranks hold the weights."""

    tensor_parallel_size: int = doc(1, "ranks (GPUs) of one attention group: they split the attention heads, the "
                                       "vocabulary and, without expert parallelism, every expert")
    data_parallel_size: int = doc(1, "attention groups per replica, each with its own requests and KV cache; the "
                                     "MoE spans all of them")
    enable_expert_parallel: bool = doc(False, "partition the experts over all TP x DP ranks instead of slicing each "
                                              "one; no effect with one rank")
    distributed_executor_backend: str = doc("mp", "with more than one rank: mp (rank processes beside the replica, "
                                                  "on its node, using the GPUs it reserves: num_gpus = ranks) or ray "
                                                  "(one Ray actor per rank in the replica's placement group, one "
                                                  "bundle each with cpus_per_rank CPUs and, on cuda, one GPU; the "
                                                  "ranks may span nodes; num_gpus = 0)")
    placement_strategy: str = doc("PACK", "ray backend: the replica's placement group strategy (PACK: one node when "
                                          "it fits; SPREAD, STRICT_PACK, STRICT_SPREAD)")
    cpus_per_rank: float = doc(1.0, "ray backend: CPUs in each rank's bundle")
    moe_dispatch: str = doc("allreduce", "MoE collectives: allreduce (every rank sees every token) or alltoall "
                                         "(tokens go only to their experts' ranks; needs enable_expert_parallel)")
    collective_timeout_s: float = doc(60.0, "a rank silent this long fails the engine (its requests end with an "
                                            "error, the health check fails and Serve replaces the replica)")

    def validate(self, path: str) -> None:
        from engine.config import ParallelConfig as EngineParallel  # noqa: PLC0415

        try:
            EngineParallel(self.tensor_parallel_size, self.data_parallel_size, self.enable_expert_parallel,
                           self.distributed_executor_backend, self.collective_timeout_s,
                           placement_strategy=self.placement_strategy, moe_dispatch=self.moe_dispatch)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None
        _check(self.cpus_per_rank > 0, f"{path}.cpus_per_rank", self.cpus_per_rank, "> 0")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    @property
    def ray_ranks(self) -> bool:
        """Whether the ranks are Ray actors in the replica's placement group."""
        return self.world_size > 1 and self.distributed_executor_backend == "ray"

    def engine_kwargs(self) -> dict:
        if self.world_size == 1:
            return {}
        fields = ("tensor_parallel_size", "data_parallel_size", "enable_expert_parallel",
                  "distributed_executor_backend", "placement_strategy", "moe_dispatch", "collective_timeout_s")
        return {name: getattr(self, name) for name in fields}


@dataclass
class EngineSettings:
    """Passed to engine.async_llm.AsyncLLM as keyword arguments (names are engine.config.EngineConfig's fields)."""

    max_num_seqs: int = doc(256, "requests running at once per replica")
    max_num_batched_tokens: int = doc(2048, "tokens per engine step (prefill chunks + decodes)")
    max_waiting_requests: int | None = doc(None, "engine waiting-queue limit per replica; past it: 429 "
                                                 "(None = unbounded)")
    block_size: int = doc(16, "tokens per KV-cache block (a power of two)")
    enable_prefix_caching: bool = doc(True, "reuse KV blocks of shared prompt prefixes")
    kv_cache_memory: int | None = doc(None, "bytes for the KV cache (None: gpu_memory_utilization on CUDA, "
                                            "256 MiB on CPU)")
    gpu_memory_utilization: float = doc(0.9, "fraction of free GPU memory after loading given to the KV cache")
    max_model_len: int | None = doc(None, "context limit in tokens (None: the checkpoint's)")
    enforce_eager: bool = doc(False, "never capture CUDA graphs for decode steps (they are captured on CUDA at "
                                     "start-up, single-rank engines only)")

    def validate(self, path: str) -> None:
        from engine.config import EngineConfig  # noqa: PLC0415

        try:
            EngineConfig.from_kwargs(model="-", **dataclasses.asdict(self))
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None


@dataclass
class AutoscalingConfig:
    """Ray Serve's autoscaling_config, on the number of ongoing requests per replica."""

    min_replicas: int = doc(1, "fewest replicas (>= 1: a cold start takes a model load)")
    max_replicas: int = doc(1, "most replicas")
    initial_replicas: int | None = doc(None, "replicas at deploy (None: min_replicas)")
    target_ongoing_requests: float = doc(16.0, "ongoing requests per replica the autoscaler aims for")
    upscale_delay_s: float = doc(30.0, "load must stay above target this long before adding replicas")
    downscale_delay_s: float = doc(600.0, "load must stay below target this long before removing replicas")
    metrics_interval_s: float = doc(10.0, "how often replicas report their load")
    look_back_period_s: float = doc(30.0, "window the load is averaged over")

    def validate(self, path: str) -> None:
        _check(self.min_replicas >= 1, f"{path}.min_replicas", self.min_replicas, ">= 1")
        _check(self.max_replicas >= self.min_replicas, f"{path}.max_replicas", self.max_replicas,
               f">= min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None:
            _check(self.min_replicas <= self.initial_replicas <= self.max_replicas, f"{path}.initial_replicas",
                   self.initial_replicas, "in [min_replicas, max_replicas]")
        for name in ("target_ongoing_requests", "metrics_interval_s", "look_back_period_s"):
            _check(getattr(self, name) > 0, f"{path}.{name}", getattr(self, name), "> 0")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", getattr(self, name), ">= 0")

    def to_serve(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class RoutingConfig:
    prefix_affinity: bool = doc(True, "send a request to the replica that served its prompt prefix (else least "
                                      "loaded); False: Ray Serve's power-of-two-choices")
    prefix_chunk_chars: int = doc(256, "prompt characters per prefix-index entry")
    imbalance_threshold: int = doc(8, "prefer the prefix replica only while it has at most this many more ongoing "
                                      "requests than the least loaded")
    max_index_entries: int = doc(100_000, "prefix-index entries kept per router (least recently used go first)")
    hash_chunks: int = doc(2, "leading prompt chunks the consistent-hash ring keys on: a prefix no router has seen "
                              "goes to its ring replica, so every ingress and gateway agree")
    max_kv_cache_usage: float = doc(0.95, "a replica reporting more KV-cache usage than this loses its affinity "
                                          "preference (the least loaded takes the request)")
    stats_period_s: float = doc(1.0, "how often each replica reports its load (queue, KV usage) to the routers")

    def validate(self, path: str) -> None:
        for name in ("prefix_chunk_chars", "max_index_entries", "hash_chunks"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", getattr(self, name), ">= 1")
        _check(self.imbalance_threshold >= 0, f"{path}.imbalance_threshold", self.imbalance_threshold, ">= 0")
        _check(0 < self.max_kv_cache_usage <= 1, f"{path}.max_kv_cache_usage", self.max_kv_cache_usage, "in (0, 1]")
        _check(self.stats_period_s > 0, f"{path}.stats_period_s", self.stats_period_s, "> 0")


@dataclass
class ModelSpec:
    name: str = doc(None, "the model name clients send (`model` in the request)")
    path: str = doc(None, "checkpoint directory (HF or original/ layout), readable on every node")
    dtype: str = doc("bfloat16", "float32 or bfloat16")
    device: str | None = doc(None, "cpu or cuda (None: cuda when the replica has a GPU)")
    num_cpus: float = doc(1.0, "CPUs reserved per replica (also its torch threads on CPU)")
    num_gpus: float = doc(0.0, "GPUs reserved by the replica process (with the mp backend: its ranks' GPUs, "
                               "tensor_parallel_size x data_parallel_size; with ray: 0)")
    parallel: ParallelSection = doc(ParallelSection(), "per-replica parallelism")
    engine: EngineSettings = doc(EngineSettings(), "engine settings, per replica")
    num_replicas: int = doc(1, "fixed replica count (ignored when autoscaling is set)")
    autoscaling: AutoscalingConfig | None = doc(None, "autoscale between min and max replicas (None: fixed)")
    max_ongoing_requests: int = doc(64, "requests Ray Serve sends one replica at once (engine running + waiting)")
    graceful_shutdown_timeout_s: float = doc(30.0, "a stopping replica drains in-flight requests this long")
    health_check_period_s: float = doc(10.0, "how often Serve checks the engine's health")
    routing: RoutingConfig = doc(RoutingConfig(), "routing across this model's replicas")
    default_reasoning_effort: str = doc("medium", "reasoning_effort when a request gives none")
    default_max_tokens: int | None = doc(None, "max_tokens when a request gives none (None: up to the context)")

    def validate(self, path: str) -> None:
        _check(isinstance(self.name, str) and bool(self.name) and "/" not in self.name and "#" not in self.name,
               f"{path}.name", self.name, "a non-empty string without '/' or '#'")
        _check(isinstance(self.path, str) and bool(self.path), f"{path}.path", self.path, "a checkpoint directory")
        _check(self.dtype in ("float32", "bfloat16"), f"{path}.dtype", self.dtype, "float32 or bfloat16")
        _check(self.device in (None, "cpu", "cuda"), f"{path}.device", self.device, "cpu, cuda or null")
        _check(self.num_cpus >= 0 and self.num_gpus >= 0, f"{path}.num_cpus/num_gpus",
               (self.num_cpus, self.num_gpus), ">= 0")
        _check(self.num_replicas >= 1, f"{path}.num_replicas", self.num_replicas, ">= 1")
        _check(self.max_ongoing_requests >= 1, f"{path}.max_ongoing_requests", self.max_ongoing_requests, ">= 1")
        _check(self.graceful_shutdown_timeout_s >= 0, f"{path}.graceful_shutdown_timeout_s",
               self.graceful_shutdown_timeout_s, ">= 0")
        _check(self.health_check_period_s > 0, f"{path}.health_check_period_s", self.health_check_period_s, "> 0")
        _check(self.default_reasoning_effort in REASONING_EFFORTS, f"{path}.default_reasoning_effort",
               self.default_reasoning_effort, f"one of {list(REASONING_EFFORTS)}")
        _check(self.default_max_tokens is None or self.default_max_tokens >= 1, f"{path}.default_max_tokens",
               self.default_max_tokens, ">= 1 or null")
        world, parallel = self.parallel.world_size, self.parallel
        if parallel.ray_ranks:
            _check(self.num_gpus == 0, f"{path}.num_gpus", self.num_gpus,
                   "0 with distributed_executor_backend ray (each rank's bundle holds its GPU)")
            _check(self.num_cpus > 0, f"{path}.num_cpus", self.num_cpus,
                   "> 0 with distributed_executor_backend ray (the replica's own bundle cannot be empty)")
        elif world > 1 and (self.device == "cuda" or self.num_gpus):
            _check(self.num_gpus == world, f"{path}.num_gpus", self.num_gpus,
                   f"{world} (tensor_parallel_size x data_parallel_size): mp ranks use the GPUs the replica reserves")

    def engine_kwargs(self) -> dict:
        """Keyword arguments for AsyncLLM."""
        return {"model": self.path, "dtype": self.dtype, "device": self.device, **dataclasses.asdict(self.engine),
                **self.parallel.engine_kwargs()}

    def placement_group_bundles(self) -> list[dict] | None:
        """Ray backend: the replica's own bundle, then one per rank (Serve reserves them all before it starts the
        replica; the engine's RayExecutor places its rank actors in the last ones)."""
        if not self.parallel.ray_ranks:
            return None
        rank = {"CPU": self.parallel.cpus_per_rank, **({"GPU": 1} if self.device == "cuda" else {})}
        return [{"CPU": self.num_cpus}] + [dict(rank) for _ in range(self.parallel.world_size)]


@dataclass
class AppConfig:
    models: list[ModelSpec] = doc([], "the models served; clients pick one by name")
    name: str = doc("gptoss", "the Ray Serve application name")
    http: HttpConfig = doc(HttpConfig(), "where the API listens")
    auth: AuthConfig = doc(AuthConfig(), "API keys: when any is configured, every route but /health needs one")
    limits: LimitsConfig = doc(LimitsConfig(), "request limits")
    grpc: GrpcConfig = doc(GrpcConfig(), "the gRPC gateway (off unless enabled)")
    ingress_replicas: int = doc(1, "replicas of the HTTP ingress (auth, validation, routing)")
    metrics_push_interval_s: float = doc(1.0, "how often each replica pushes its metrics to the /metrics hub")

    def validate(self, path: str = "") -> None:
        _check(len(self.models) >= 1, "models", self.models, "a list of at least one model")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, "models[].name", dupes, "unique")
        _check(self.ingress_replicas >= 1, "ingress_replicas", self.ingress_replicas, ">= 1")
        _check(self.metrics_push_interval_s > 0, "metrics_push_interval_s", self.metrics_push_interval_s, "> 0")

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- loading ---------------------------------------------------------------------------------------------------------


def from_dict(cls, data, path: str = ""):
    """Builds dataclass `cls` from plain data: unknown keys, wrong types and bad values fail naming the field."""
    where = path or "config"
    _check(isinstance(data, dict), where, type(data).__name__, "a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], data[name], f"{path}.{name}" if path else name)
              for name in known if name in data}
    required = [n for n, f in known.items() if f.default is None and n not in data and n in ("name", "path")]
    if required:
        raise ConfigError(f"{where}: missing required key(s) {required}")
    obj = cls(**values)
    obj.validate(where)
    for name in known:  # defaults of nested sections are validated too
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value) and name not in data:
            value.validate(f"{path}.{name}" if path else name)
    return obj


def _convert(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, path)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is list:
        _check(isinstance(value, list), path, value, "a list")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, "a number")
        return float(value)
    _check(isinstance(value, hint) and not (hint is int and isinstance(value, bool)), path, value,
           f"of type {hint.__name__}")
    return value


def load_config(source: str | Path | dict) -> AppConfig:
    """An AppConfig from a YAML/JSON file path or an already-parsed mapping."""
    if isinstance(source, dict):
        return from_dict(AppConfig, source)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {err}") from None
    return from_dict(AppConfig, data or {})


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


def default_config_yaml() -> str:
    """Every field with its default and documentation, as a commented YAML file (one model shown)."""
    lines: list[str] = []
    _document(AppConfig, lines, indent="")
    return "\n".join(lines) + "\n"


def _document(cls, lines: list[str], indent: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        lines.append(f"{indent}# {f.metadata.get('doc', '')}")
        hint = hints[f.name]
        inner = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
        if f.name == "models":
            lines.append(f"{indent}models:")
            lines.append(f"{indent}  -")
            _document(ModelSpec, lines, indent + "    ")
        elif dataclasses.is_dataclass(hint) or inner is not None:
            lines.append(f"{indent}{f.name}:")
            _document(inner or hint, lines, indent + "  ")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{indent}{f.name}: {json.dumps(default)}")
