"""The gRPC gateway: gptoss.v1.Inference (proto/gptoss/v1/inference.proto) in front of the LLMServer replicas.

Request path:

    gRPC client -> GrpcGateway replica (cluster.app; gateway.py: grpc.aio server on grpc.host:grpc.port, TLS/mTLS,
                   message-size limit, health, reflection)
      -> auth.py (AuthInterceptor: `authorization: Bearer KEY`, constant time; health is open)
      -> servicer.py (limits.py: stream cap, per-key requests/s and tokens/s; convert.py: proto -> GenerateRequest,
         INVALID_ARGUMENT naming the field; the model by name; prefix hashes; the call's deadline)
      -> Serve handle + PrefixAffinityRouter (cluster/router.py: learned prefix owner, else consistent hashing,
         against replica-reported load) -> LLMServer.generate with output="deltas" (stream.py, in the replica)
      <- SampleDelta / StreamEnd -> convert.py -> GenerateResponse / ChatResponse messages
    A failure before the first token is retried once on another replica; a cancelled or expired call cancels the
    replica stream (the engine aborts the request, freeing its KV blocks); a replica dying mid-stream -> UNAVAILABLE.

codegen.py makes the Python stubs from proto/ into the git-ignored _gen/ folder (a build step; never edited).
"""
