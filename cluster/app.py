"""Builds the Ray Serve application from an AppConfig: `serve run cluster.app:build_app config=FILE`.

Deployments (made here, at build time, from plain classes; every concurrency limit from the config):
    Ingress (FastAPI; auth, validation, SSE)  --handle, PrefixAffinityRouter-->  LLMServer:<model> (one AsyncLLM each)
    GrpcGateway (when grpc.enabled; a grpc.aio server on grpc.host:grpc.port)  --handle, same router-->  LLMServer
    MetricsHub (one replica; replicas and front doors push snapshots, GET /metrics renders them; the drain flag)
Both front doors (Ingress, GrpcGateway) share cluster/frontdoor.py; the Ingress takes as many requests at once as
every model's replicas and router queues can hold (`AppConfig.ingress_max_ongoing`), so it never queues first.
"""

from pathlib import Path

from ray import serve
from ray.serve.config import RequestRouterConfig

from cluster.config import AppConfig, ModelSpec, load_config
from cluster.hub import MetricsHub
from cluster.ingress import Ingress
from cluster.server import LLMServer

ROUTER_CLASS = "cluster.router:PrefixAffinityRouter"
HUB_NAME = "MetricsHub"


class ServeModelClient:
    """A front door's client of one model's LLMServer deployment (a Ray Serve handle; cluster.frontdoor.ModelClient)."""

    def __init__(self, handle):
        self.handle = handle.options(stream=True)
        self._plain = handle

    def stream(self, req):
        return self.handle.generate.remote(req)

    async def health(self) -> bool:
        await self._plain.check_health.remote()
        return True

    async def tokenize(self, req):
        return await self._plain.tokenize.remote(req)


class ServeIngress(Ingress):
    """The Ingress as a deployment: handles to the models' deployments come in, ModelClients wrap them."""

    async def __init__(self, config: dict, handles: dict, hub, grpc_gateway=None):
        super().__init__(config, {name: ServeModelClient(h) for name, h in handles.items()}, hub, _source("ingress"))
        self.grpc_gateway = grpc_gateway  # bound here so that Serve deploys it; the ingress never calls it
        self.door.pusher.start()  # from the start, so a drain counts this replica even before its first request

    async def check_health(self) -> None:
        self.door.pusher.start()

    async def __del__(self):
        await self.door.pusher.stop()


class ServeGrpcGateway:
    """The gRPC gateway as a deployment: its replica runs the grpc.aio server (it takes no Serve requests)."""

    async def __init__(self, config: dict, handles: dict, hub=None):
        from cluster.grpc.gateway import Gateway  # noqa: PLC0415 - grpc and the generated stubs load here only

        app_config = load_config(config)
        self.gateway = Gateway(app_config, {name: ServeModelClient(h) for name, h in handles.items()}, hub)
        self.address = await self.gateway.start()
        self._grace = app_config.graceful_shutdown_timeout_s

    async def check_health(self) -> None:
        if self.gateway.server is None:
            raise RuntimeError("the gRPC server is not running")

    async def __del__(self):
        await self.gateway.stop(self._grace)


def llm_deployment_options(spec: ModelSpec, config: AppConfig) -> dict:
    """Serve options of one model's LLMServer deployment, all from the config."""
    options = {
        "name": f"LLMServer:{spec.name}",
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
        "max_ongoing_requests": spec.replica_capacity,
        "max_queued_requests": config.limits.max_queued_requests,
        "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s,
        "health_check_period_s": spec.health_check_period_s,
    }
    bundles = spec.placement_group_bundles()
    if bundles is not None:  # the ranks are Ray actors in the replica's placement group (the replica in bundle 0)
        options["placement_group_bundles"] = bundles
        options["placement_group_strategy"] = spec.parallel.placement_strategy
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.to_serve()
    else:
        options["num_replicas"] = spec.num_replicas
    if spec.routing.prefix_affinity:
        routing = spec.routing
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=ROUTER_CLASS,
            request_routing_stats_period_s=routing.stats_period_s,
            request_routing_stats_timeout_s=max(routing.stats_period_s, 5.0),
            request_router_kwargs={"imbalance_threshold": routing.imbalance_threshold,
                                   "max_index_entries": routing.max_index_entries,
                                   "hash_chunks": routing.hash_chunks,
                                   "max_kv_cache_usage": routing.max_kv_cache_usage})
    return options


def _source(kind: str) -> str:
    """A front door's name at the hub: its kind and its Serve replica id."""
    from ray import serve  # noqa: PLC0415

    return f"{kind}/{serve.get_replica_context().replica_id.unique_id}"


def gateway_actor_options(config: AppConfig) -> dict:
    """No CPUs (it waits on sockets); pinned by grpc.node_resource to the nodes whose port clients can reach."""
    options = {"num_cpus": 0}
    if config.grpc.node_resource:
        options["resources"] = {config.grpc.node_resource: 0.001}
    return options


def build_from_config(config: AppConfig):
    """The bound application: ingress -> one LLMServer deployment per model, plus the metrics hub."""
    hub = serve.deployment(MetricsHub, name=HUB_NAME, num_replicas=1, max_ongoing_requests=10_000,
                           ray_actor_options={"num_cpus": 0}).bind(config.metrics_push_interval_s)
    handles = {}
    for spec in config.models:
        deployment = serve.deployment(LLMServer, **llm_deployment_options(spec, config))
        handles[spec.name] = deployment.bind(spec, hub, config.metrics_push_interval_s, tools=config.tools)
    grace = config.graceful_shutdown_timeout_s + 5  # a front door outlives the replicas' own drain
    gateway = None
    if config.grpc.enabled:
        gateway = serve.deployment(ServeGrpcGateway, name="GrpcGateway", num_replicas=config.grpc.replicas,
                                   max_replicas_per_node=1, ray_actor_options=gateway_actor_options(config),
                                   graceful_shutdown_timeout_s=grace).bind(config.to_dict(), handles, hub)
    ingress = serve.deployment(serve.ingress()(ServeIngress), name="Ingress", num_replicas=config.ingress_replicas,
                               max_ongoing_requests=config.ingress_max_ongoing(),
                               max_queued_requests=config.limits.max_queued_requests,
                               graceful_shutdown_timeout_s=grace, ray_actor_options={"num_cpus": 0})
    return ingress.bind(config.to_dict(), handles, hub, gateway)


def build_app(args: dict):
    """Serve's application builder. `args["config"]`: a YAML/JSON path, or the config mapping itself (serveConfigV2)."""
    source = args.get("config")
    if source is None:
        raise ValueError("build_app needs args['config']: a config file path or the config mapping; e.g. "
                         "`serve run cluster.app:build_app config=serve.yaml`")
    config = load_config(source if isinstance(source, dict) else Path(source))
    for spec in config.models:  # relative checkpoint paths mean "from where the builder runs" (as gptoss serve)
        spec.path = str(Path(spec.path).expanduser().absolute())
    return build_from_config(config)
