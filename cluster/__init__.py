"""gptoss-serve's cluster: Ray Serve replicas of the engine behind an OpenAI-compatible API.

Request path:

    client (openai SDK, curl)
      -> Serve HTTP proxy (127.0.0.1:8000 unless configured)
      -> Ingress replica (ingress.py): API key (hmac.compare_digest; all routes but /health and /openapi.json),
         body limit (413), JSON + field validation against the OpenAI request models (protocol/, 400 naming the field)
      -> FrontDoor (frontdoor.py, shared with the gRPC gateway): refused while draining (503), model by name (404),
         prefix hashes for routing, `received` and `deadline` stamped on the request, one retry on another replica
         before the first token
      -> PrefixAffinityRouter (router.py): the replica that served the prompt's prefix, else the least loaded
      -> LLMServer replica (server.py): harmony rendering, context checks, AsyncLLM.generate; engine queue full ->
         429 with Retry-After (Serve's max_queued_requests -> 503); the deadline aborts the engine request (408)
      -> formatters (output/: openai, responses, deltas): reasoning_content / content / tool_calls, SSE frames
      <- back the same way; a client that disconnects cancels the stream and the engine request is aborted.

The gRPC path (grpc.enabled; API in proto/gptoss/v1, code in cluster/grpc/) skips the HTTP proxy and ingress:

    gRPC client -> GrpcGateway replica (a grpc.aio server on 127.0.0.1:50051 unless configured; TLS/mTLS from files):
                   API key, per-key rate limits, stream cap, validation naming the proto field -> the same FrontDoor
                   (the call's deadline) -> LLMServer (`output="deltas"`) -> protobuf messages

No hidden caps: the Ingress takes as many requests at once as every model's replicas and router queues can hold,
and a replica twice what its engine batches (`AppConfig.ingress_max_ongoing`, `ModelSpec.replica_capacity`); TTFT
and queue time count from the front door, so a queue anywhere on the way shows in them.

Modules, one noun each: config (the one config file, pydantic; sections builds on), auth (API keys -> the caller's
identity, for both protocols), protocol/ (requests: one module per endpoint, the response models for /openapi.json),
errors (OpenAI error bodies), frontdoor, ingress, router, server, output/ (formatters), hub (metrics and the drain
flag), metrics (every metric name), app (the Serve application; also `serve run cluster.app:build_app
config=FILE`), cli (`gptoss serve`); grpc/ (the gRPC gateway: codegen, convert, servicer, auth, limits, gateway);
responses/ (stored responses: config, store, service, runs, chain, http routes, chat for gRPC); tools/ (tools the
replicas run: config, harmony, sandbox, kernel, python, browser, mcp, toolset, loop).

Configuration: `gptoss serve --print-default-config` prints every field with its documentation;
`cluster/configs/local.yaml` is what `make serve` runs. The same file drives `gptoss serve --config FILE`,
`serve run cluster.app:build_app config=FILE`, and `gptoss serve --print-serve-config FILE`, whose output is a Ray
Serve config for `serve deploy` and KubeRay's `serveConfigV2` (the whole config travels inline as the builder's
args). A replica's engine may span ranks (`parallel` in a model's config): with the `mp` backend the rank processes
run beside the replica on its node and use the GPUs it reserves; with `ray` the deployment reserves a placement group
(bundle 0 for the replica, one bundle per rank) and the engine's RayExecutor puts its rank actors there, so the
ranks may span nodes and go away with the replica.

Metrics: one scrape target, `GET /metrics` on the API (needs the API key when keys are configured). Every LLM
replica and front door pushes a snapshot of its series to the MetricsHub deployment (hub.py) each
`metrics_push_interval_s`; the ingress renders all live snapshots, labelled `model_name` and `replica` (names:
cluster/metrics.py). A replica that stops reporting is dropped after max(60 s, 30 pushes).

Responses (README.md lists what is supported and refused): the front doors share `ResponsesService`
(responses/: the store, SQLite by default or PostgreSQL from a DSN, owned per API key; `previous_response_id`
chains rendered as the whole history; background runs in the front door that took them, with a renewed claim in
the store, cancel and resumable event streams from any front door). The tools the server runs (tools/: python in a
bubblewrap sandbox per conversation, browser over a configured search backend, MCP servers from an allow-list) run
in the LLM replica between engine steps of one response (tools/loop.py), so the prefix cache serves every step.

API notes: `tool_choice` "required" or a named
function limits the tools the prompt offers but is not enforced by constrained decoding. The header
`X-Request-Timeout: SECONDS` shortens a request's deadline (never beyond limits.request_timeout_s).

Security defaults: the API binds 127.0.0.1 unless `http.host` says otherwise; `gptoss serve` starts Ray without its
dashboard (Ray's own GCS/raylet/agent ports keep Ray's defaults and its token authentication, on by default in
Ray 2.60); API keys are compared with hmac.compare_digest against every configured key; clients get JSON only.
Graceful shutdown: a stopping replica (downscale, redeploy) takes no new requests and Serve waits up to
`graceful_shutdown_timeout_s` for its in-flight ones before the engine is stopped. Ctrl-C (SIGINT/SIGTERM) on
`gptoss serve` drains the whole cluster: the hub's drain flag reaches every front door at its next push, they answer
new requests with 503 + Retry-After (gRPC UNAVAILABLE, health NOT_SERVING), and `gptoss serve` waits until every
front door has confirmed and holds nothing in flight (or the grace period passed), then deletes the application
and stops Ray; a second signal skips the wait.
"""
