"""Tensor, expert and data parallelism: one model over many processes (GPUs, nodes), sharded at load time.

    LLM(model=DIR, tensor_parallel_size=2, enable_expert_parallel=True, distributed_executor_backend="mp")

Process and data flow (see docs/parallelism.md for the bytes each step moves):
  driver (EngineCore: scheduler, KV block tables, detokenizer; no weights)
    -> DistributedRunner.execute: StepMessage (host tensors) to every rank through the Executor (mp or Ray)
    -> Worker (one per rank: its shard, its KV heads): forward with the collectives of layers.py; the first rank
       of each attention group samples -> {request id: (token, logprobs)} back to the driver.
Modules: config (sizes, timeouts), tp (which slice each rank holds), loading (reading only those slices),
comm (process groups), layers (the parallel layers), moe_dispatch (the MoE's collectives: gather/reduce or
all-to-all), worker, executor (launchers), runner (driver side), dp_scheduler (one scheduler per attention group).
"""
