"""The tool loop inside LLMServer, exactly: the model's scripted turns (a stand-in engine that writes given harmony
text, the only way to make a random model call python twice) and the real python sandbox. Checked: each step's
prompt is the previous prompt + the tokens the model wrote + the tool's answer + `<|start|>assistant`, token for
token; max_tool_calls answers a call past the limit with an error instead of running it; max_output_tokens is one
budget over all steps; the events stream in order. The engine stand-in is only the scheduler's seat: rendering,
parsing, the sandbox and the loop are the real ones (tests/cluster/test_responses_api.py runs the loop on the real
engine)."""

import asyncio
import json
import shutil
import time

import pytest

from cluster.output.responses import ResponseRecord
from cluster.protocol.responses import parse_responses
from cluster.server import LLMServer
from cluster.tools.harmony import answer_ids
from engine.outputs import CompletionOutput, RequestOutput
from engine.text.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
CALL = "<|channel|>analysis to=python code<|message|>{code}<|call|>"


class ScriptedEngine:
    """Writes one scripted harmony text per request and records the prompts it was given."""

    def __init__(self, tokenizer, turns: list[str], max_model_len: int = 4096):
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self.max_tokens_per_sequence = max_model_len
        self.turns, self.prompts, self.params = list(turns), [], []
        self.healthy = True

    async def generate(self, prompt, params, request_id):
        ids = prompt["prompt_token_ids"]
        self.prompts.append(list(ids))
        self.params.append(params)
        out = self.tokenizer.encode(self.turns.pop(0), allow_special=True)[:params.max_tokens]
        finish = "stop" if out and out[-1] in self.tokenizer.stop_token_ids else "length"
        for i, token in enumerate(out):
            last = i == len(out) - 1
            yield RequestOutput(request_id, None, ids, [CompletionOutput(0, [token], "", None,
                                                                         finish if last else None)],
                                finished=last, metrics={"first_token": time.monotonic()})
            await asyncio.sleep(0)

    async def abort(self, request_id):
        pass

    def stats(self):
        return None

    def shutdown(self):
        pass


def serve(tiny_model, turns, **request):
    tok = Tokenizer.load(tiny_model)
    engine = ScriptedEngine(tok, turns)
    spec = {"name": "tiny", "path": str(tiny_model), "dtype": "float32", "device": "cpu"}

    async def go():
        server = LLMServer(spec, engine_factory=lambda **_: engine, tools={"python": {"enabled": True}})
        server.tokenizer = tok
        req = parse_responses({"model": "tiny", "input": "Compute.", "stream": True, "temperature": 0,
                               "tools": [{"type": "code_interpreter", "container": "auto"}],
                               "include": ["code_interpreter_call.outputs"], **request}, 0)
        req.received, req.deadline = time.time(), time.time() + 60
        items = [item async for item in server.generate(req)]
        await server.tools.close()
        return items
    items = asyncio.run(go())
    events = [json.loads(i.split("data: ", 1)[1]) for i in items if isinstance(i, str)]
    return tok, engine, events, next(i for i in items if isinstance(i, ResponseRecord))


def test_each_step_continues_the_last_token_for_token(tiny_model):
    turns = [CALL.format(code="x = 6 * 7\nprint(x)"), CALL.format(code="print(x + 1)"),
             "<|channel|>final<|message|>42 and 43.<|return|>"]
    tok, engine, events, record = serve(tiny_model, turns)
    first, second, third = engine.prompts
    step1 = tok.encode(turns[0], allow_special=True)
    assert second == first + step1 + answer_ids(tok, "python", "analysis", "42\n")
    step2 = tok.encode(turns[1], allow_special=True)
    assert third == second + step2 + answer_ids(tok, "python", "analysis", "43\n")
    output = record.body["output"]
    assert [(i["type"], (i.get("outputs") or [{}])[0].get("logs")) for i in output] == [
        ("code_interpreter_call", "42\n"), ("code_interpreter_call", "43\n"), ("message", None)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert record.body["usage"]["input_tokens"] == len(first) + len(second) + len(third)


def test_a_call_past_max_tool_calls_is_answered_not_run(tiny_model):
    turns = [CALL.format(code="print('ran')"), CALL.format(code="print('must not run')"),
             "<|channel|>final<|message|>done<|return|>"]
    tok, engine, events, record = serve(tiny_model, turns, max_tool_calls=1)
    first, second = record.body["output"][:2]
    assert first["outputs"][0]["logs"] == "ran\n" and first["status"] == "completed"
    assert second["status"] == "failed" and second["outputs"] is None
    assert "at most 1 tool calls" in record.hidden[second["id"]]["result"]
    assert "must not run" not in tok.decode(engine.prompts[-1]).split("<|call|>")[-1]


def test_max_output_tokens_is_one_budget_over_the_steps(tiny_model):
    turns = [CALL.format(code="print(1)"), "<|channel|>final<|message|>" + "word " * 50 + "<|return|>"]
    tok, engine, events, record = serve(tiny_model, turns, max_output_tokens=30)
    step1 = len(tok.encode(turns[0], allow_special=True))
    assert engine.params[1].max_tokens == 30 - step1
    assert record.body["usage"]["output_tokens"] == 30 and record.body["status"] == "incomplete"
