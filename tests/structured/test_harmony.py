"""Constrained decoding through the engine (`LLM`, tiny random model, CPU): only the grammar can make its outputs
valid, so every output validating (jsonschema) shows the constraint held; the harmony turn parses, the analysis
budget holds, unconstrained requests in the same batch are bit-identical, and preemption, async scheduling and
n > 1 change nothing."""

import dataclasses
import json

import jsonschema
import pytest

from engine import LLM, SamplingParams
from engine.structured.params import Grammar, StructuredOutputs
from engine.text import vocab as V
from engine.text.tokenizer import Tokenizer
from tests.engine.test_engine_core import assert_same
from tests.structured.schemas import SCHEMAS

MESSAGES = [{"role": "user", "content": "Answer in JSON."}]


def chat_prompt(model, i: int) -> dict:
    messages = [{"role": "user", "content": f"Question {i}: answer in JSON."}]
    return {"prompt_token_ids": Tokenizer.load(model).render_chat(messages)}


def answer_params(schema: dict, seed: int, **kw) -> SamplingParams:
    spec = StructuredOutputs(final=Grammar.json_schema(schema, "response_format.json_schema.schema"))
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=120, structured_outputs=spec,
                          stop_token_ids=[V.RETURN, V.CALL], skip_special_tokens=False, **kw)


def check_answer(tokenizer, token_ids: list[int], schema: dict, budget: int) -> None:
    parsed = tokenizer.parse_completion(token_ids)
    assert not parsed.malformed and not parsed.tool_calls
    jsonschema.validate(json.loads(parsed.final), schema)
    assert analysis_tokens(tokenizer, token_ids) <= budget
    assert token_ids[-1] == V.RETURN


def analysis_tokens(tokenizer, token_ids: list[int]) -> int:
    """Tokens of the analysis message the turn opens with (0 without one)."""
    head = tokenizer.encode("<|channel|>analysis<|message|>", allow_special=True)
    return token_ids.index(V.END) - len(head) if token_ids[:len(head)] == head else 0


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(tiny_model, dtype="float32", device="cpu")


def test_twenty_schemas_all_validate_in_the_final_channel(tiny_model, llm):
    params = [answer_params(s, seed=i, max_reasoning_tokens=8) for i, s in enumerate(SCHEMAS)]
    outs = llm.generate([chat_prompt(tiny_model, i) for i in range(len(SCHEMAS))], params)
    for out, schema in zip(outs, SCHEMAS):
        check_answer(llm.tokenizer, out.outputs[0].token_ids, schema, 8)


def test_without_harmony_the_whole_output_matches(llm):
    spec = StructuredOutputs(final=Grammar("regex", r"[a-c]{3}-[0-9]{2}"), harmony=False)
    outs = llm.generate(["hello"] * 4, [SamplingParams(temperature=1.0, seed=i, max_tokens=20, structured_outputs=spec)
                                        for i in range(4)])
    for out in outs:
        assert out.outputs[0].finish_reason == "stop"
        assert len(out.outputs[0].text) == 6 and out.outputs[0].text[3] == "-"


def test_required_tool_call_validates(tiny_model, llm):
    tools = [("get_weather", SCHEMAS[5]), ("lookup", SCHEMAS[0])]
    spec = StructuredOutputs(final=None, functions=tuple((n, Grammar.json_schema(s, f"tools[{i}]"))
                                                         for i, (n, s) in enumerate(tools)))
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=100, structured_outputs=spec,
                             max_reasoning_tokens=5, stop_token_ids=[V.RETURN, V.CALL], skip_special_tokens=False)
              for i in range(6)]
    for out in llm.generate([chat_prompt(tiny_model, i) for i in range(6)], params):
        parsed = llm.tokenizer.parse_completion(out.outputs[0].token_ids)
        assert len(parsed.tool_calls) == 1 and not parsed.final
        call = parsed.tool_calls[0]
        jsonschema.validate(json.loads(call.arguments_json), dict(tools)[call.name])
        assert out.outputs[0].token_ids[-1] == V.CALL


def test_reasoning_budget_zero_and_alone(tiny_model, llm):
    """No analysis at all with budget 0; a budget alone (no grammar) still ends the analysis and opens final."""
    out = llm.generate(chat_prompt(tiny_model, 0), answer_params(SCHEMAS[1], 0, max_reasoning_tokens=0))[0]
    assert out.outputs[0].token_ids[:3] == llm.tokenizer.encode("<|channel|>final<|message|>", allow_special=True)
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=40, max_reasoning_tokens=4,
                            stop_token_ids=[V.RETURN, V.CALL], skip_special_tokens=False)
    for seed in range(4):
        params.seed = seed
        ids = llm.generate(chat_prompt(tiny_model, 1), params)[0].outputs[0].token_ids
        parsed = llm.tokenizer.parse_completion(ids)
        assert not parsed.malformed and not parsed.tool_calls and analysis_tokens(llm.tokenizer, ids) <= 4
        assert ids[-1] == V.RETURN or len(ids) == 40


def test_unconstrained_rows_keep_their_greedy_tokens_in_a_mixed_batch(tiny_model, llm):
    plain = SamplingParams(temperature=0, max_tokens=16, logprobs=2, ignore_eos=True)
    prompts = [chat_prompt(tiny_model, i) for i in range(6)]
    alone = [llm.generate(p, plain)[0].outputs[0] for p in prompts[:3]]
    mixed = llm.generate(prompts, [plain] * 3 + [answer_params(s, i) for i, s in enumerate(SCHEMAS[:3])])
    for single, batched in zip(alone, mixed[:3]):
        assert_same(batched.outputs[0], single)  # the same tolerance as any batch (tests/engine/test_engine_core)
    for out, schema in zip(mixed[3:], SCHEMAS[:3]):
        check_answer(llm.tokenizer, out.outputs[0].token_ids, schema, 60)


def run(model, params, prompts, **engine):
    return [o.outputs for o in LLM(model, dtype="float32", device="cpu", **engine).generate(prompts, params)]


def test_preemption_async_scheduling_and_n_keep_constrained_outputs(tiny_model):
    """Seeded requests: their tokens do not depend on the batch, so every engine set-up must give the same ones."""
    params = [answer_params(s, seed=i, max_reasoning_tokens=6) for i, s in enumerate(SCHEMAS[:12])]
    params[0] = dataclasses.replace(params[0], n=3)
    prompts = [chat_prompt(tiny_model, i) for i in range(12)]
    base = run(tiny_model, params, prompts)
    small = LLM(tiny_model, dtype="float32", device="cpu", kv_cache_memory=24 * 4096, max_num_batched_tokens=128)
    preempted = [o.outputs for o in small.generate(prompts, params)]
    assert small.engine.stats().num_preemptions > 0
    overlapped = run(tiny_model, params, prompts, async_scheduling=True, kv_cache_memory=24 * 4096,
                     max_num_batched_tokens=128)
    tokenizer = Tokenizer.load(tiny_model)
    for b, p, o, schema in zip(base, preempted, overlapped, SCHEMAS):
        assert [s.token_ids for s in b] == [s.token_ids for s in p] == [s.token_ids for s in o]
        for sample in b:
            check_answer(tokenizer, sample.token_ids, schema, 6)
    assert len(base[0]) == 3 and len({tuple(s.token_ids) for s in base[0]}) > 1


@pytest.mark.parametrize("schema, field, words", [
    ({"type": "object", "if": {"type": "object"}}, "response_format.json_schema.schema.if", "not supported"),
    ({"type": "object", "properties": {"a": {"type": "string", "contentMediaType": "x"}}},
     "response_format.json_schema.schema.properties.a.contentMediaType", "not supported"),
    ({"type": "nope"}, "response_format.json_schema.schema", "cannot be compiled"),
])
def test_bad_schemas_are_value_errors_naming_the_field(tiny_model, llm, schema, field, words):
    with pytest.raises(ValueError, match="^" + field.replace(".", r"\.").replace("[", r"\[") + ".*" + words):
        llm.generate(chat_prompt(tiny_model, 0), answer_params(schema, 0))
    assert llm.generate(chat_prompt(tiny_model, 0), answer_params(SCHEMAS[1], 0))  # the engine goes on


def test_builtin_tools_stay_callable_beside_the_constraint(tiny_model, llm):
    """A built-in recipient offered: a turn may call it (free code, ended by <|call|>); with no answer allowed, every
    turn does, and with one allowed, the turns that answer validate."""
    prompts = [chat_prompt(tiny_model, i) for i in range(6)]
    for final, seeds in ((None, range(6)), (Grammar.json_schema(SCHEMAS[2], "text.format.schema"), range(6, 12))):
        spec = StructuredOutputs(final=final, builtins=("python",))
        params = [SamplingParams(temperature=1.0, seed=i, max_tokens=60, structured_outputs=spec,
                                 max_reasoning_tokens=4, stop_token_ids=[V.RETURN, V.CALL], skip_special_tokens=False)
                  for i in seeds]
        for out in llm.generate(prompts, params):
            ids = out.outputs[0].token_ids
            if final is None or "to=python" in llm.tokenizer.decode(ids):
                assert "to=python code<|message|>" in llm.tokenizer.decode(ids)
                assert ids[-1] == V.CALL or len(ids) == 60  # the code is free text: it may run to max_tokens
            else:
                jsonschema.validate(json.loads(llm.tokenizer.parse_completion(ids).final), SCHEMAS[2])
