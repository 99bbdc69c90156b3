"""The committed tiny harmony model, served by the real cluster and driven by the official clients, does what it
was trained for: reasoning then a correct final answer, function calls with valid JSON arguments, answers from tool
results, JSON answers for a response format, the built-in python tool for large products, and shorter reasoning
at low effort. Requests run concurrently; every reply is greedy.
"""

import csv
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from statistics import mean

import openai
import pytest

from engine.text.tokenizer import Tokenizer
from engine.train import corpus, evaluation
from engine.train.renderer import Renderer

# Beyond issue 19's bar (copying a sequence of letters in order, counting them, and so the JSON values of count
# questions), the committed model (retrained 2026-12-02) stays under these thresholds. The thresholds stay; each test
# still runs, and an xpass shows when a retrained model gets there.
BELOW = "beyond issue 19's bar: the committed tiny harmony model scores {} here (2026-12-02), under the threshold"

N = 100  # generated cases per task
SEED = 20_261_201  # not the training seed, not the evaluation seed of the model card


def cases(task: str, n: int = N) -> list[corpus.Dialogue]:
    return evaluation.cases(task, n, SEED)


def chat(client: openai.OpenAI, dialogue: corpus.Dialogue, messages: list[dict] | None = None):
    tools = {"tools": dialogue.tools} if dialogue.tools else {}
    return client.chat.completions.create(model="tiny", messages=messages or dialogue.messages, temperature=0,
                                          max_tokens=evaluation.MAX_TOKENS, reasoning_effort=dialogue.effort,
                                          **tools).choices[0]


def concurrently(fn, items: list) -> list:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(fn, items))


def share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def reasoning(choice) -> str:
    return (choice.message.model_extra or {}).get("reasoning_content") or ""


def test_arithmetic_reasons_then_answers_correctly(client):
    dialogues = cases("arithmetic")
    choices = concurrently(lambda d: chat(client, d), dialogues)
    right = []
    for d, c in zip(dialogues, choices):
        a, op, b, _ = re.match(r"(\d+) (\S) (\d+) = (\d+)\.", d.final).groups()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        numbers = re.findall(r"-?\d+", c.message.content or "")
        right.append(c.finish_reason == "stop" and bool(numbers) and int(numbers[-1]) == value
                     and bool(reasoning(c).strip()))
    assert share(right) >= 0.9, [(d.messages[-1]["content"], c.message.content) for d, c in zip(dialogues, choices)]


def test_weather_question_calls_the_tool_with_json_arguments(client):
    dialogues = [d for d in cases("weather_call", 2 * N) if d.call[0] == "functions.get_weather"][:N]
    choices = concurrently(lambda d: chat(client, d), dialogues)
    right = []
    for d, c in zip(dialogues, choices):
        calls = c.message.tool_calls or []
        ok = c.finish_reason == "tool_calls" and len(calls) == 1 and calls[0].function.name == "get_weather"
        if ok:
            try:
                ok = json.loads(calls[0].function.arguments) == json.loads(d.call[1])
            except json.JSONDecodeError:
                ok = False
        right.append(ok)
    assert share(right) >= 0.9


def tool_loop(client: openai.OpenAI, dialogue: corpus.Dialogue) -> tuple[str | None, str]:
    """Ask, run the tool call the model makes (weather from the dialogue's own result), return (answer, value)."""
    first = chat(client, dialogue, dialogue.messages[:1])
    if not first.message.tool_calls:
        return None, ""
    call = first.message.tool_calls[0]
    output = dialogue.messages[-1]["content"]  # the tool's result as the corpus generated it
    value = re.findall(r"-?\d+(?::\d+)?", output)[0]
    messages = [dialogue.messages[0], first.message.model_dump(exclude_none=True, exclude={"model_extra"}),
                {"role": "tool", "tool_call_id": call.id, "content": output}]
    return chat(client, dialogue, messages).message.content, value


def test_answer_after_the_tool_result_carries_its_value(client):
    dialogues = cases("weather_answer", 50)
    results = concurrently(lambda d: tool_loop(client, d), dialogues)
    assert share([answer is not None and value in answer for answer, value in results]) >= 0.9


def json_answers(client, n: int = 50) -> list[tuple[corpus.Dialogue, object]]:
    """(dialogue, the parsed JSON reply or None where it does not parse) for `n` response-format questions."""
    dialogues = cases("json", n)
    choices = concurrently(lambda d: chat(client, d), dialogues)
    parsed = []
    for c in choices:
        try:
            parsed.append(json.loads(c.message.content))
        except (TypeError, json.JSONDecodeError):
            parsed.append(None)
    return list(zip(dialogues, parsed))


def test_response_format_gets_a_json_answer(client):
    """The issue's bar: the answer parses, as an object with the one key the developer message asked for."""
    answers = json_answers(client)
    assert share([isinstance(p, dict) and p.keys() == json.loads(d.final).keys() for d, p in answers]) >= 0.9


@pytest.mark.xfail(reason=BELOW.format("0.76"), strict=False)
def test_json_answer_values_are_right(client):
    """Beyond it: the value is right too (30% of these questions are letter counts, which the model gets wrong more
    often than not; its sums, differences and products are right)."""
    assert share([p == json.loads(d.final) for d, p in json_answers(client)]) >= 0.9


def test_low_effort_reasons_shorter_than_high(client):
    base = cases("arithmetic", 30)
    lengths = {}
    for effort in ("low", "high"):
        dialogues = [corpus.Dialogue(d.task, effort, d.messages, d.reply) for d in base]
        lengths[effort] = mean(len(reasoning(c)) for c in concurrently(lambda d: chat(client, d), dialogues))
    assert lengths["low"] < lengths["high"] / 2


def test_large_product_goes_to_the_python_tool(harmony_app):
    """Through the gRPC gateway: the harmony prompt with python declared, the output parsed per channel."""
    pb, stub = harmony_app.grpc.stubs.pb, harmony_app.grpc.stub()
    renderer = Renderer(Tokenizer.load())
    dialogues = cases("python_call", 30)

    def run(d: corpus.Dialogue) -> list[tuple[str, str]]:
        request = pb.GenerateRequest(model="tiny", prompt_token_ids=renderer.render(d).prompt, parse_harmony=True,
                                     sampling=pb.SamplingParams(max_tokens=evaluation.MAX_TOKENS, temperature=0))
        calls: dict[str, str] = {}
        for response in stub.Generate(request, timeout=120):
            for part in response.channel_text:
                if part.recipient:
                    calls[part.recipient] = calls.get(part.recipient, "") + part.text
        return list(calls.items())

    results = concurrently(run, dialogues)
    assert share([r == [d.call] for d, r in zip(dialogues, results)]) >= 0.9


def test_readme_quick_start(harmony_app):
    """The README's curl: a reasoning + answer pair."""
    import httpx

    readme = (evaluation.Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = json.loads(re.search(r"-d '(\{\"model\": \"tiny\".*?\})'", readme).group(1))
    reply = httpx.post(f"{harmony_app.base}/v1/chat/completions", json=body, timeout=120).json()
    message = reply["choices"][0]["message"]
    question = body["messages"][-1]["content"]
    a, op, b = re.search(r"(\d+) (\S) (\d+)", question).groups()
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert message["reasoning_content"] and str(value) in message["content"]


@pytest.mark.parametrize("task", [
    pytest.param("reverse", marks=pytest.mark.xfail(reason=BELOW.format("0.00"), strict=False)),
    pytest.param("count", marks=pytest.mark.xfail(reason=BELOW.format("0.37"), strict=False)),
    "greeting"])
def test_other_head_tasks(client, task):
    dialogues = cases(task, 30)
    choices = concurrently(lambda d: chat(client, d), dialogues)
    assert share([c.message.content == d.final for d, c in zip(dialogues, choices)]) >= 0.8


def test_load_tester_splits_reasoning_from_the_answer(harmony_app, tmp_path):
    """`gptoss loadtest` streaming real conversations: every request reasons first, then answers; the reasoning
    tokens it reports are the server's usage count, a part of the output, and the final channel starts later."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": d.messages, "max_tokens": 128}) + "\n"
                               for d in cases("arithmetic", 12)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine.cli", "loadtest", "run", "--url", harmony_app.base, "--model", "tiny",
           "--api", "chat", "--concurrency", "4", "--num-requests", "12", "--prompts-file", str(prompts),
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 0 < int(r["reasoning_tokens"]) < int(r["output_tokens"]), r
        assert float(r["ttft_final_ms"]) > float(r["ttft_ms"]), r
    summary = json.loads((out / "result.json").read_text())["points"][0]["summary"]
    assert 0 < summary["reasoning_tok_s"] < summary["output_tok_s"]
