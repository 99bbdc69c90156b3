"""/v1/completions requests: the OpenAI (legacy) Completions request body, validated -> `GenerateRequest`.

Flow: `parse_completion(body)` -> `CompletionRequest` (one prompt: text or token ids; sampling ranges; logprobs up
to 5 as OpenAI publishes) -> `GenerateRequest(kind="completion")`; the prompt is raw text (no harmony) unless a
gRPC caller asks for `parse_harmony`.
"""

import secrets

from pydantic import Field

from cluster.errors import bad_request
from cluster.protocol.common import MaxTokens, SamplingFields, check_sampling, include_usage, sampling_of, validate
from cluster.protocol.request import GenerateRequest

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "ignore_eos", "min_tokens")
UNSUPPORTED = {
    "echo": "the prompt is not repeated in the output",
    "suffix": "insertion (fill-in-the-middle) is not supported by gpt-oss",
}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="one prompt: text or token ids (a list holding exactly one of them is accepted too)")
    max_tokens: MaxTokens = None
    logprobs: int | None = Field(None, ge=0, le=5, description="top-n logprobs per token, at most 5 (OpenAI's)")
    best_of: int | None = Field(None, ge=1, le=1, description="only 1: use n for several completions")
    echo: bool | None = None
    suffix: str | None = None


def parse_completion(data: dict, created: int) -> GenerateRequest:
    req = validate(CompletionRequest, data, UNSUPPORTED)
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request("a list of several prompts is not supported; send one request per prompt", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise bad_request("prompt must be a non-empty string or list of token ids", "prompt")
    sampling = sampling_of(req, SAMPLING)
    sampling["max_tokens"] = req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
    if req.logprobs is not None:
        sampling["logprobs"] = req.logprobs
    check_sampling(sampling, {})
    return GenerateRequest("completion", req.model, "cmpl-" + secrets.token_hex(12), sampling, bool(req.stream),
                           include_usage(req), prompt=prompt, renames={"prompt_token_ids": "prompt"},
                           created=created)

