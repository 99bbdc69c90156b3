"""The offline API: `LLM(model=DIR).generate(prompts, SamplingParams(...))` and `LLM.chat(messages)`.

A thin synchronous client of `EngineCore`: every prompt is queued at once and the engine batches them.
"""

from pathlib import Path

from engine.config import EngineConfig
from engine.engine_core import EngineCore, PromptType, engine_config
from engine.outputs import ChatResult, RequestOutput
from engine.request import merge_outputs
from engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | Path | None = None, *, config: EngineConfig | None = None, **engine_args):
        self.engine = EngineCore(engine_config(model, config, **engine_args))
        self.config, self.tokenizer = self.engine.config, self.engine.tokenizer

    def generate(self, prompts: PromptType | list[PromptType],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """One finished RequestOutput per prompt, in order (n > 1: one CompletionOutput per sample)."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        groups = [self.engine.make_requests(p, sp, request_id=f"llm-{i}") for i, (p, sp)
                  in enumerate(zip(prompts, params))]
        self.engine.add([r for group in groups for r in group])
        while self.engine.has_work:
            self.engine.step()
        return [merge_outputs(group, group, delta=False) for group in groups]

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None,
             reasoning_effort: str = "medium", tools: list[dict] | None = None) -> ChatResult:
        """Render with harmony, generate until <|return|> or <|call|>, and parse the channels."""
        prompt = self.tokenizer.render_chat(messages, reasoning_effort=reasoning_effort, tools=tools)
        params = sampling_params or SamplingParams(temperature=0, max_tokens=256)
        params.stop_token_ids = self.tokenizer.turn_stop_ids(params.stop_token_ids, params.ignore_eos)
        out = self.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
        parsed = self.tokenizer.parse_completion(out.token_ids)
        return ChatResult(parsed.analysis, parsed.final, parsed.tool_calls, out.token_ids, out.finish_reason,
                          parsed.malformed)
