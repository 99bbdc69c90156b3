"""What the engine returns: per-request outputs in the shape vLLM users know (`RequestOutput.outputs[0].text`)."""

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int  # which of the request's n samples
    token_ids: list[int]  # generated so far (all of them, or only the new ones in a streaming delta)
    text: str  # detokenized text (stop strings excluded)
    logprobs: list[dict[int, float]] | None  # per generated token: {chosen id and top-n ids: logprob}
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: dict = field(default_factory=dict)  # timestamps: arrival, scheduled, first_token, finished


@dataclass
class ChatResult:
    """A chat completion parsed from the harmony channels."""

    analysis: str  # reasoning (analysis channel)
    final: str  # the answer (final channel)
    tool_calls: list  # engine.text.tokenizer tool calls parsed from the commentary channel
    token_ids: list[int]
    finish_reason: str | None
    malformed: bool = False  # the model's output did not follow the harmony format
