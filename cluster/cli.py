"""`gptoss serve`: run the application on a local Ray cluster, or print its Ray Serve / default config.

    gptoss serve --config FILE                        # local Ray cluster on this machine; Ctrl-C drains and stops it
    gptoss serve --config FILE --ray-address auto     # deploy onto a running Ray cluster instead
    gptoss serve --print-serve-config FILE            # Serve config YAML (serve deploy, KubeRay serveConfigV2)
    gptoss serve --print-default-config               # every config field, documented

(`gptoss audit verify` and `gptoss keys` are registered here too: cluster/safety_cli.py.)
"""

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from cluster import safety_cli
from cluster.config import AppConfig, ConfigError, default_config_yaml, load_config, serve_config


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve_cmd = commands.add_parser("serve", help="serve the OpenAI-compatible API on Ray Serve")
    what = serve_cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="application config (YAML or JSON)")
    what.add_argument("--print-serve-config", metavar="FILE", help="print the Ray Serve config for FILE and exit")
    what.add_argument("--print-default-config", action="store_true", help="print every field, documented")
    serve_cmd.add_argument("--ray-address", default=None,
                           help="join this Ray cluster (e.g. auto) instead of starting a local one")
    serve_cmd.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    serve_cmd.set_defaults(run=run)
    safety_cli.add_commands(commands)


def run(args: argparse.Namespace) -> int:
    try:
        if args.print_default_config:
            print(default_config_yaml(), end="")
            return 0
        if args.print_serve_config:
            config = load_config(Path(args.print_serve_config))  # paths as written: they are the cluster's
            if config.auth.api_keys:
                print("warning: auth.api_keys are literal keys and appear in this output; prefer api_keys_env",
                      file=sys.stderr)
            print(yaml.safe_dump(serve_config(config), sort_keys=False), end="")
            return 0
        return serve_forever(_load(args.config), args.ray_address, args.num_cpus)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2


def _load(path: str) -> AppConfig:
    """The config with model paths made absolute (replicas do not run in this directory)."""
    config = load_config(Path(path))
    for spec in config.models:
        spec.path = str(Path(spec.path).expanduser().resolve())
        if not Path(spec.path).is_dir():
            raise ConfigError(f"models[{spec.name}].path {spec.path!r} is not a directory "
                              "(for the tiny harmony model: `make tiny-harmony`)")
    return config


def serve_forever(config: AppConfig, ray_address: str | None, num_cpus: int | None) -> int:
    """Run until SIGINT/SIGTERM; then drain: the front doors refuse new requests (503 / UNAVAILABLE) while every
    request in flight finishes, for up to the models' graceful_shutdown_timeout_s; a second signal stops at once."""
    import ray  # noqa: PLC0415 - heavy; only when serving
    from ray import serve  # noqa: PLC0415

    from cluster.app import build_from_config  # noqa: PLC0415

    check_sources(config)  # fail now, not in a replica, when a key or policy source is missing or bad
    signals = _Signals()
    ray.init(address=ray_address or "local", num_cpus=num_cpus if ray_address is None else None,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": config.http.host, "port": config.http.port}, proxy_location="HeadOnly")
        print(f"starting {len(config.models)} model(s); the first start loads weights ...", flush=True)
        serve.run(build_from_config(config), name=config.name, route_prefix=config.http.route_prefix)
        print(banner(config), flush=True)
        signals.first.wait()
        grace = config.graceful_shutdown_timeout_s
        print(f"\nstopping: draining in-flight requests (up to {grace:g} s; Ctrl-C again stops at once) ...",
              flush=True)
        left = drain(config, signals.second, grace)
        print("drained: every request in flight finished" if left == 0 else
              f"stopping with {left} request(s) still in flight", flush=True)
    finally:
        _stop(config.name)
    print("gptoss-serve stopped", flush=True)
    return 0


def check_sources(config: AppConfig) -> None:
    """The files and variables the replicas will read (keys, policies, DSNs) exist and parse; raises ConfigError."""
    from cluster.keys import KeyRing  # noqa: PLC0415

    KeyRing(config.auth, set(config.guards.filters))
    for name, spec in config.guards.filters.items():
        if getattr(spec, "policy_file", None) and not Path(spec.policy_file).is_file():
            raise ConfigError(f"guards.filters.{name}.policy_file {spec.policy_file!r} cannot be read")
    config.audit.database()


def _stop(app_name: str) -> None:
    """Delete the application (Serve stops its replicas: engines shut down, final metrics pushed), then the local
    Ray cluster. (serve.shutdown() would also kill Serve's controller while its own shutdown call is pending,
    which the raylet logs as a failed task.)"""
    import ray  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415

    try:
        serve.delete(app_name)
    except Exception as err:  # noqa: BLE001 - not deployed (a failed start) or Serve already gone
        print(f"stopping: {err!r}", file=sys.stderr, flush=True)
    ray.shutdown()


class _Signals:
    """SIGINT / SIGTERM: the first sets `first`, the second `second` (stop at once)."""

    def __init__(self):
        self.first, self.second = threading.Event(), threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, *_):
        (self.second if self.first.is_set() else self.first).set()


def drain(config: AppConfig, stop_now: threading.Event, grace_s: float) -> int:
    """Tell the front doors to refuse new requests, wait until every one of them has confirmed it and holds no
    request in flight (or `grace_s` passed, or `stop_now`); returns the requests still in flight (-1: unknown)."""
    from ray import serve  # noqa: PLC0415

    from cluster.app import HUB_NAME  # noqa: PLC0415

    end = time.monotonic() + grace_s
    try:
        hub = serve.get_deployment_handle(HUB_NAME, app_name=config.name)
        hub.drain.remote().result(timeout_s=10)
        while True:
            status = hub.drain_status.remote().result(timeout_s=10)
            if not status["pending"] and status["in_flight"] == 0:
                return 0
            if stop_now.wait(0.2) or time.monotonic() > end:
                return status["in_flight"]
    except Exception as err:  # noqa: BLE001 - the hub is gone: nothing to wait for
        print(f"drain: the cluster's hub did not answer ({err!r})", file=sys.stderr, flush=True)
        return -1


QUICK_START = "What is 7 + 5?"  # the first question in the banner and the README: the tiny model reasons, answers


def banner(config: AppConfig) -> str:
    host = config.http.host if config.http.host not in ("0.0.0.0", "::") else "127.0.0.1"
    base = f"http://{host}:{config.http.port}{config.http.route_prefix.rstrip('/')}"
    auth = ' -H "Authorization: Bearer $GPTOSS_API_KEY"' if config.auth.enabled else ""
    model = config.models[0].name
    return "\n".join([
        "",
        f"gptoss-serve is up: models {[m.name for m in config.models]}",
        f"  HTTP (OpenAI API): {base}/v1",
        f"  gRPC:              {grpc_endpoint(config)}",
        f"  metrics:           {base}/metrics      health: {base}/health",
        "  logs:              /tmp/ray/session_latest/logs/serve/",
        "",
        "try:",
        f"  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\",
        f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"{QUICK_START}\"}}], "
        "\"max_tokens\": 64}'",
        "",
        "Ctrl-C stops the cluster.",
    ])


def grpc_endpoint(config: AppConfig) -> str:
    """Where the gRPC gateway listens, as the banner prints it."""
    g = config.grpc
    if not g.enabled:
        return "off (set grpc.enabled: true in the config)"
    host = g.host if g.host not in ("0.0.0.0", "::") else "127.0.0.1"
    security = "TLS" + (" + client certificates" if g.tls_client_ca_file else "") if g.tls else "plaintext"
    return f"{host}:{g.port}  (gptoss.v1.Inference, {security}; health and reflection; stubs: proto/)"
