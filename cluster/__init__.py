"""gptoss-serve's cluster: Ray Serve replicas of the engine behind an OpenAI-compatible API.

Request path:

    client (openai SDK, curl)
      -> Serve HTTP proxy (127.0.0.1:8000 unless configured)
      -> Ingress replica (ingress.py): API key (hmac.compare_digest; all routes but /health), body limit (413),
         JSON + field validation (protocol.py, 400 naming the field), model by name (404 model_not_found),
         deadline (408), prefix hashes of the prompt for routing
      -> PrefixAffinityRouter (router.py): the replica that served the prompt's prefix, else the least loaded
      -> LLMServer replica (server.py): harmony rendering, context checks, AsyncLLM.generate; engine queue full ->
         429 with Retry-After (Serve's max_queued_requests -> 503)
      -> formatters (openai_output.py, responses_api.py): reasoning_content / content / tool_calls, SSE frames
      <- back the same way; a client that disconnects cancels the stream and the engine request is aborted.

The gRPC path (grpc.enabled; API in proto/gptoss/v1, code in cluster/grpc/) skips the HTTP proxy and ingress:

    gRPC client -> GrpcGateway replica (a grpc.aio server on 127.0.0.1:50051 unless configured; TLS/mTLS from files):
                   API key, per-key rate limits, stream cap, validation naming the proto field, deadline stamped
                   on the request -> the same PrefixAffinityRouter -> LLMServer (`output="deltas"`) -> protobuf
                   messages; a failure before the first token is retried once on another replica

Modules, one noun each: config (the one config file), protocol (requests), errors (OpenAI error bodies), ingress,
router, server, openai_output, responses_api, metrics (every metric name), app (the Serve application; also
`serve run cluster.app:build_app config=FILE`), cli (`gptoss serve`); grpc/ (the gRPC gateway: codegen, convert,
servicer, auth, limits, stream, gateway).

Configuration: `gptoss serve --print-default-config` prints every field with its documentation;
`cluster/configs/local.yaml` is what `make serve` runs. The same file drives `gptoss serve --config FILE`,
`serve run cluster.app:build_app config=FILE`, and `gptoss serve --print-serve-config FILE`, whose output is a Ray
Serve config for `serve deploy` and KubeRay's `serveConfigV2` (the whole config travels inline as the builder's
args). A replica's engine may span ranks (`parallel` in a model's config): with the `mp` backend the rank processes
run beside the replica on its node and use the GPUs it reserves; with `ray` the deployment reserves a placement group
(bundle 0 for the replica, one bundle per rank) and the engine's RayExecutor puts its rank actors there, so the
ranks may span nodes and go away with the replica.

Metrics: one scrape target, `GET /metrics` on the API (needs the API key when keys are configured). Every LLM
replica pushes a snapshot of its series to the MetricsHub deployment each `metrics_push_interval_s`; the ingress
renders all live snapshots, labelled `model_name` and `replica` (names: cluster/metrics.py). A replica that stops
reporting is dropped after max(60 s, 30 pushes).

API notes: /v1/responses is stateless (no store; `previous_response_id` is refused: send the conversation as
input items). `tool_choice` "required" or a named function limits the tools the prompt offers but is not enforced
by constrained decoding. Chat logprobs and structured output (response_format) are refused with a 400 for now.
The header `X-Request-Timeout: SECONDS` shortens a request's deadline (never beyond limits.request_timeout_s).

Security defaults: the API binds 127.0.0.1 unless `http.host` says otherwise; `gptoss serve` starts Ray without its
dashboard (Ray's own GCS/raylet/agent ports keep Ray's defaults and its token authentication, on by default in
Ray 2.60); API keys are compared with hmac.compare_digest against every configured key; clients get JSON only.
Graceful shutdown: a stopping replica (downscale, redeploy, Ctrl-C) takes no new requests and Serve waits up to
`graceful_shutdown_timeout_s` for its in-flight ones before the engine is stopped.
"""
