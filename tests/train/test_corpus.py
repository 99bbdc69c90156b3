"""The corpus: every task renders exactly as the server and harmony render, and every answer is right."""

import json
import random
import re
from statistics import mean

import pytest

from engine.text.tokenizer import Tokenizer
from engine.text.vocab import CALL, RETURN, START
from engine.train import corpus
from engine.train.renderer import Renderer


@pytest.fixture(scope="module")
def renderer():
    return Renderer(Tokenizer.load())


def draws(task: str, n: int, seed: int = 0) -> list[corpus.Dialogue]:
    rng = random.Random(seed)
    return [corpus.draw(rng, task) for _ in range(n)]


@pytest.mark.parametrize("task", list(corpus.TASKS))
def test_rendering_matches_harmony_and_the_server(renderer, task):
    for dialogue in draws(task, 40):
        renderer.verify(dialogue)  # fast == harmony's whole-conversation render == render_chat (where it applies)
        rendered = renderer.render(dialogue)
        assert rendered.prompt[-2:] == [START, renderer.tokenizer.encode("assistant")[0]]
        assert rendered.target[-1] == (CALL if dialogue.call else RETURN)


def test_mix_covers_every_task():
    assert set(corpus.MIX) == set(corpus.TASKS) and abs(sum(corpus.MIX.values()) - 1) < 1e-9
    tasks = {d.task for d in corpus.dialogues(0, 400)}
    assert tasks == set(corpus.TASKS)


def test_deterministic():
    first, second = corpus.dialogues(5, 50), corpus.dialogues(5, 50)
    assert [(d.messages, d.final, d.call) for d in first] == [(d.messages, d.final, d.call) for d in second]


def question(dialogue: corpus.Dialogue) -> str:
    return dialogue.messages[[m["role"] for m in dialogue.messages].index("user")]["content"]


def expression(text: str) -> tuple[int, str, int]:
    a, op, b = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", text).groups()
    return int(a), {"plus": "+", "minus": "-", "times": "*"}.get(op, op), int(b)


def value(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_arithmetic_answers_are_right():
    for d in draws("arithmetic", 300):
        a, op, b = expression(question(d))
        assert d.final == f"{a} {op} {b} = {value(a, op, b)}."
        assert f"{a}{op}{b}={value(a, op, b)}." in d.reply[0].content[0].text  # the analysis works it out
        assert value(a, op, b) >= 0


def test_drill_answers_are_right():
    for d in draws("drill", 200):
        asked = re.findall(r"(\d+) ([-+*]) (\d+)", question(d))
        assert corpus.DRILL_SIZE[0] <= len(asked) <= corpus.DRILL_SIZE[1]
        results = [value(int(a), op, int(b)) for a, op, b in asked]
        assert d.final == ", ".join(map(str, results))
        for (a, op, b), c in zip(asked, results):
            assert f"{a}{op}{b}={c}." in d.reply[0].content[0].text  # worked out in the analysis


def letters_of(text: str) -> list[str]:
    return re.findall(r"\b([a-z])\b", text.split(":")[-1].replace("backwards", "").replace("Write", ""))


def test_reverse_and_count_answers_are_right():
    for d in draws("reverse", 200):
        assert d.final == " ".join(reversed(letters_of(question(d))))
    for d in draws("count", 200):
        q = question(d).replace("How many letters are in", "").replace("How many letters does", "")
        assert d.final == str(len(re.findall(r"\b[a-z]\b", q.replace("have", ""))))


def test_function_calls_and_answers():
    for d in draws("weather_call", 200):
        recipient, args = d.call
        assert recipient in ("functions.get_weather", "functions.get_time")
        tool_names = {t["function"]["name"] for t in d.tools}
        assert recipient.removeprefix("functions.") in tool_names
        assert json.loads(args)["city"] in question(d)
        assert ("time" in question(d)) == (recipient == "functions.get_time")
    for d in draws("weather_answer", 200):
        output = d.messages[-1]["content"]
        numbers = re.findall(r"-?\d+(?::\d+)?", output)
        assert numbers and numbers[0] in d.final  # the answer carries the tool's value


def test_builtin_tools():
    for d in draws("python_call", 100):
        a, _, b = expression(question(d))
        assert d.builtin == ("python",) and d.call == ("python", f"print({a} * {b})")
        assert min(a, b) > corpus.PRODUCT_MAX  # never a product the model is taught to do in its head
    for d in draws("python_answer", 100):
        a, _, b = expression(question(d))
        assert d.history[-1].content[0].text == f"{a * b}\n" and d.final == f"{a} * {b} = {a * b}."
    for d in draws("search_call", 100):
        assert d.builtin == ("browser",) and d.call[0] == "browser.search"
        assert json.loads(d.call[1])["query"] in question(d)
    for d in draws("search_answer", 100):
        assert d.final in d.history[-1].content[0].text  # answered from the page


def test_json_answers_follow_the_format():
    for d in draws("json", 200):
        schema = json.loads(d.messages[0]["content"].split("\n\n")[-1])
        answer = json.loads(d.final)
        assert list(answer) == schema["required"] and isinstance(answer[schema["required"][0]], int)


@pytest.mark.parametrize("task", ["arithmetic", "drill", "reverse", "count", "weather_call", "python_call", "json"])
def test_reasoning_effort_sets_the_analysis_length(task):
    lengths = {effort: [] for effort in corpus.EFFORTS}
    for d in draws(task, 300):
        lengths[d.effort].append(len(d.reply[0].content[0].text))
    assert mean(lengths["low"]) < mean(lengths["medium"]) < mean(lengths["high"])
