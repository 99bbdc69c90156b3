"""Tensor, expert and data parallelism: one model over many processes (GPUs, nodes), sharded at load time.

    LLM(model=DIR, tensor_parallel_size=2, enable_expert_parallel=True, distributed_executor_backend="mp")

Process and data flow (see docs/parallelism.md for the bytes each step moves):
  driver (EngineCore: scheduler per attention group, KV block tables, detokenizer; no weights)
    -> RankExecutor.execute: the step's SchedulerOutputs (plain data) to every rank (mp pipes or Ray calls)
    -> engine.worker.Worker on each rank (its shard, its KV heads): forward with the collectives of layers.py; the
       first rank of each attention group samples -> {request id: (token, logprobs)} back to the driver.
The Worker is the same class a one-rank engine runs in-process (engine.executor); only loading differs.
Modules: tp (which slice each rank holds), loading (reading only those slices), comm (process groups), layers (the
parallel layers), moe_dispatch (the MoE's collectives: gather/reduce or all-to-all), executor (launchers: mp
processes, Ray actors), dp_scheduler (one scheduler per attention group). Sizes and timeouts:
engine.config.ParallelConfig.
"""
