"""The offline API: `LLM(model=DIR).generate(prompts, SamplingParams(...))` and `LLM.chat(messages)`."""

import itertools
import json
from pathlib import Path

import torch

from engine.checkpoint import load_weights
from engine.detokenizer import IncrementalDetokenizer
from engine.model.reference import DenseKVCache, Transformer
from engine.outputs import ChatResult, RequestOutput
from engine.request import Request
from engine.sampler import Sampler, SamplingBatch
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PromptType = str | dict | list[int]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def generation_eos_ids(model_dir: Path, config_eos: tuple[int, ...]) -> frozenset[int]:
    """The end-of-sequence ids from config.json and generation_config.json together."""
    ids = set(config_eos)
    path = model_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id", [])
        ids |= set(eos if isinstance(eos, list) else [eos])
    return frozenset(ids)


class LLM:
    def __init__(self, model: str | Path, dtype: str | torch.dtype = "bfloat16", device: str | None = None):
        self.model_dir = Path(model)
        self.dtype, self.device = resolve_dtype(dtype), resolve_device(device)
        self.config, weights = load_weights(self.model_dir, self.dtype, self.device)
        self.model = Transformer.from_weights(self.config, weights)
        self.tokenizer = Tokenizer.load(self.model_dir)
        self.eos_token_ids = generation_eos_ids(self.model_dir, self.config.eos_token_ids)
        self.sampler = Sampler()
        self._ids = itertools.count()

    # ---- requests ----
    def prompt_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a prompt given as text, {"prompt_token_ids": [...]} or a list of ids."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else prompt
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in ids):
            raise ValueError("prompt must be text, a non-empty list of token ids, or {'prompt_token_ids': [...]}")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids must be in [0, {self.config.vocab_size}), got {bad[:5]}")
        return None, list(ids)

    def make_request(self, prompt: PromptType, params: SamplingParams, request_id: str | None = None) -> Request:
        text, ids = self.prompt_ids(prompt)
        params.validate_for_model(self.config.vocab_size, self.config.max_position_embeddings, len(ids))
        detok = IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens)
        return Request(request_id or str(next(self._ids)), ids, params, self.eos_token_ids, prompt=text,
                       detokenizer=detok, device=self.device)

    # ---- generation ----
    def generate(self, prompts: PromptType | list[PromptType],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """One finished RequestOutput per prompt, in order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        requests = [self.make_request(p, sp) for p, sp in zip(prompts, params)]
        return [self._run(r) for r in requests]

    def _run(self, request: Request) -> RequestOutput:
        cache = DenseKVCache(self.config.num_hidden_layers)
        ids = torch.tensor(request.prompt_token_ids, device=self.device)
        positions = torch.arange(len(ids), device=self.device)
        while not request.finished:
            logits = self.model.compute_logits(self.model(ids, positions, cache))[-1:]
            self._sample(request, logits)
            ids = torch.tensor(request.output_token_ids[-1:], device=self.device)
            positions = torch.tensor([request.num_tokens - 1], device=self.device)
        return request.to_output()

    def _sample(self, request: Request, logits: torch.Tensor) -> None:
        batch = SamplingBatch.build([request.params], [request.prompt_token_ids], [request.output_token_ids],
                                    [request.generator], [request.stop_ids], self.config.vocab_size, self.device)
        out = self.sampler(logits, batch)
        token = int(out.token_ids[0])
        logprobs = None
        if request.params.logprobs is not None:
            logprobs = dict(zip(out.topn_ids[0, : request.params.logprobs].tolist(),
                                out.topn_logprobs[0, : request.params.logprobs].tolist()))
            logprobs[token] = float(out.logprobs[0])
        request.append(token, logprobs)

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None,
             reasoning_effort: str = "medium", tools: list[dict] | None = None) -> ChatResult:
        """Render with harmony, generate until <|return|> or <|call|>, and parse the channels."""
        prompt = self.tokenizer.render_chat(messages, reasoning_effort=reasoning_effort, tools=tools)
        params = sampling_params or SamplingParams(temperature=0, max_tokens=256)
        params.stop_token_ids = sorted(set(params.stop_token_ids or ()) | set(self.tokenizer.stop_token_ids))
        out = self.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
        parsed = self.tokenizer.parse_completion(out.token_ids)
        return ChatResult(parsed.analysis, parsed.final, parsed.tool_calls, out.token_ids, out.finish_reason,
                          parsed.malformed)
