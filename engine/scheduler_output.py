"""What a scheduled step tells the workers: plain data (ids, ints, lists, SamplingParams), the same object for every
rank, pickled as it is to rank processes. No worker sees a `Request`, the scheduler or the KV cache manager.

Flow: `Scheduler.schedule()` -> one `SchedulerOutput` per attention group (data parallelism: one per group) ->
`Executor.execute(outputs)` -> on each rank `Worker.prepare` keeps each request's block tables up to date from
`ScheduledRequest.block_ids` and turns the step into tensors; the sampling rank of the group keeps each request's
sampling state from its `NewRequestData` until the id comes back in `finished_request_ids`.
"""

from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams

PENDING = -1  # in ScheduledRequest.token_ids: the token this request sampled in the step before, which the scheduler
#               does not know yet under async scheduling; the worker that sampled it fills it in on the device


@dataclass
class NewRequestData:
    """A request the workers have not seen: what sampling needs for its whole life (sent once)."""

    request_id: str
    params: SamplingParams
    seed: int | None  # its generator's seed (params.seed + sample index); None: the device's default generator
    prompt_token_ids: list[int]  # for the repetition penalty (empty when the request has none)
    stop_ids: list[int]  # token ids that end it: banned until min_tokens outputs


@dataclass
class ScheduledRequest:
    """One request's part of one step."""

    request_id: str
    token_ids: list[int]  # the tokens computed this step, at positions start...; PENDING: see above
    start: int  # position of token_ids[0]: tokens already in (or being written to) the KV cache
    sample: bool  # token_ids end where the request's known tokens end: sample its next token from the last row
    table_start: int  # block_ids[g] replace the table from this index on (0: the whole table)
    block_ids: list[list[int]]  # per KV group: the table entries from table_start on (NULL_BLOCK = nothing);
    #                             entries before table_start stay, except those out of a sliding window at `start`
    #                             (KVCacheLayout.release_bounds), which hold the null block


@dataclass
class SchedulerOutput:
    """One attention group's step."""

    requests: list[ScheduledRequest] = field(default_factory=list)  # batch order
    new_requests: list[NewRequestData] = field(default_factory=list)  # scheduled for the first time
    finished_request_ids: list[str] = field(default_factory=list)  # gone since the last step: drop their state

    @property
    def num_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.requests)
