"""How well a written checkpoint does each corpus task, measured through the engine (greedy).

Flow: fresh dialogues per task (a seed apart from training's) -> `Renderer.render(...).prompt`, the layout the
server uses -> `LLM.generate` on the checkpoint as written (bf16 weights, MXFP4 experts), stopping at `<|return|>`
or `<|call|>` -> `Tokenizer.parse_completion` -> `judge`: the final answer equals the expected one (and comes
after a non-empty analysis where the corpus reasons), or the one tool call has the expected recipient and content.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.text.tokenizer import ChatCompletionParse
from engine.train import corpus
from engine.train.renderer import Renderer

EVAL_SEED = 1_000_003  # far from the training seeds: a different stream of dialogues
MAX_TOKENS = 160  # the longest reply in the corpus is ~100 tokens


@dataclass
class Case:
    dialogue: corpus.Dialogue  # what was asked and the expected answer
    parse: ChatCompletionParse  # what the model generated, by channel
    correct: bool


def cases(task: str, n: int, seed: int = EVAL_SEED) -> list[corpus.Dialogue]:
    """`n` dialogues of `task`, deterministic for the seed (a stream per task)."""
    rng = random.Random(f"{seed}-{task}")
    return [corpus.draw(rng, task) for _ in range(n)]


def judge(dialogue: corpus.Dialogue, parse: ChatCompletionParse) -> bool:
    """Did the reply do what the corpus teaches for this dialogue?"""
    if parse.malformed:
        return False
    if dialogue.call is not None:
        recipient, content = dialogue.call
        name = recipient.removeprefix("functions.")
        return [(c.name, c.arguments_json) for c in parse.tool_calls] == [(name, content)]
    reasons = dialogue.reply[0].channel == "analysis"
    return parse.final == dialogue.final and not parse.tool_calls and (bool(parse.analysis) or not reasons)


def run_cases(llm: LLM, dialogues: list[corpus.Dialogue]) -> list[Case]:
    renderer = Renderer(llm.tokenizer)
    prompts = [{"prompt_token_ids": renderer.render(d).prompt} for d in dialogues]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, stop_token_ids=llm.tokenizer.stop_token_ids)
    outputs = llm.generate(prompts, params)
    parses = [llm.tokenizer.parse_completion(out.outputs[0].token_ids) for out in outputs]
    return [Case(d, p, judge(d, p)) for d, p in zip(dialogues, parses)]


def evaluate(model_dir: str | Path, n: int = 100, tasks: list[str] | None = None, seed: int = EVAL_SEED
             ) -> dict[str, float]:
    """task -> share of `n` greedy replies judged correct.

    One torch thread: the tiny model's ops are too small to split, and on a shared machine a second thread that
    is descheduled stalls every op (measured: 13x slower with 2 threads under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    llm = LLM(model_dir, dtype="float32", device="cpu", max_num_seqs=64, max_num_batched_tokens=8192)
    try:
        return {task: sum(c.correct for c in run_cases(llm, cases(task, n, seed))) / n
                for task in tasks or list(corpus.TASKS)}
    finally:
        llm.engine.shutdown()
        torch.set_num_threads(threads)
