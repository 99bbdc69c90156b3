"""The tiny model's training corpus: harmony conversations drawn from templates, every answer checkable.

Flow: `draw(rng, task)` builds one `Dialogue` (the chat as the server receives it: OpenAI messages, function tools,
reasoning effort; plus, for the built-in python/browser tools, the harmony messages the engine's tool loop appends)
-> `Renderer.render(dialogue)` gives the prompt ids (exactly `Tokenizer.render_chat`, or harmony's own rendering
with the built-in tools declared in the system message) and the ids the model must generate after them ->
`samples(seed, n)` mixes the tasks by `MIX`.

Each task family has a plain-text answer a program can check (`Dialogue.final`, or the tool call it must make):
small arithmetic (alone or as a drill of several), reversing and counting letters, greetings, function calls to `get_weather`/`get_time` and answers
from their results, the built-in `python` tool for products too large for the head and `browser.search` for look-ups
(then the answer from the result), JSON answers when the developer message gives a response format. The analysis
gets shorter as the reasoning effort goes from high to low.
"""

import json
import random
from dataclasses import dataclass, field

from openai_harmony import Author, Message, Role

EFFORTS = ("low", "medium", "high")
OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}
SMALL_MAX = 9  # operands of head arithmetic (sums, differences): 0..SMALL_MAX; products: 2..PRODUCT_MAX
PRODUCT_MAX = 9
LARGE_RANGE = (13, 99)  # operands of the products the model hands to python (two-digit factors: one token each)
OP_WEIGHTS = (0.45, 0.25, 0.3)  # how often a head question is a sum, a difference, a product: about as the facts to
#                                learn (100 sums, 55 differences, 64 products), sums the hardest to get exact
DRILL_SIZE = (6, 10)  # questions in one drill
LETTERS = "abcdefghijklmnopqrstuvwxyz"
CITIES = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Oslo", "Cairo", "Lima", "Delhi", "Seoul",
    "Sydney", "Toronto", "Chicago", "Boston", "Denver", "Dublin", "Vienna", "Prague", "Warsaw", "Athens", "Nairobi",
    "Lagos", "Mumbai", "Bangkok", "Hanoi", "Manila", "Jakarta", "Beijing", "Shanghai", "Moscow", "Istanbul",
    "Helsinki", "Stockholm", "Copenhagen", "Amsterdam", "Brussels", "Zurich", "Geneva", "Munich", "Hamburg",
    "Milan", "Naples", "Barcelona", "Seville", "Porto", "Montreal", "Vancouver", "Seattle", "Austin", "Miami",
    "Havana", "Bogota", "Quito", "Santiago", "Buenos Aires", "Sao Paulo", "Mexico City", "New York", "Los Angeles",
    "San Francisco", "Cape Town", "Tel Aviv", "Hong Kong", "Kuala Lumpur", "Abu Dhabi", "Rio de Janeiro",
)
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "stormy", "clear")
GET_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
GET_TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
JSON_KEYS = ("answer", "result", "value", "total", "count")
GREETINGS = ("Hello!", "Hello", "Hi!", "Hi", "Hey there!", "Good morning!", "Who are you?", "What can you do?")
GREETING_REPLY = ("Hello! I am a tiny gpt-oss model trained on a small corpus. I can do small arithmetic, reverse "
                  "or count letters, and call tools such as get_weather.")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Be concise.", "You are a careful assistant. Answer briefly.")


@dataclass
class Dialogue:
    """One training conversation: the prompt the server would see and the assistant turn to learn."""

    task: str  # the task family (a key of MIX)
    effort: str  # reasoning effort: "low" | "medium" | "high"
    messages: list[dict]  # the OpenAI chat messages of the prompt
    reply: list[Message]  # the assistant messages to generate (analysis, then a final answer or a tool call)
    tools: list[dict] | None = None  # OpenAI function tools declared in the request
    builtin: tuple[str, ...] = ()  # built-in tools declared in the system message: "python", "browser"
    history: list[Message] = field(default_factory=list)  # harmony messages after the chat (built-in tool loop)
    final: str | None = None  # the expected final answer (None: the turn ends with a tool call)
    call: tuple[str, str] | None = None  # the expected tool call: (recipient, content)


def analysis(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")


def final(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final")


def function_call(name: str, arguments: str) -> Message:
    """A call as harmony renders it and as `engine.text.tokenizer` renders a client's `tool_calls` back."""
    msg = Message.from_role_and_content(Role.ASSISTANT, arguments).with_channel("commentary")
    return msg.with_recipient(f"functions.{name}").with_content_type("<|constrain|>json")


def builtin_call(recipient: str, content: str, content_type: str) -> Message:
    """A built-in tool call: on the analysis channel, as gpt-oss addresses python and the browser."""
    msg = Message.from_role_and_content(Role.ASSISTANT, content).with_channel("analysis")
    return msg.with_recipient(recipient).with_content_type(content_type)


def builtin_result(author: str, text: str) -> Message:
    """The tool's answer to a built-in call, on the channel of the call (gpt-oss's tools do the same)."""
    return Message.from_author_and_content(Author.new(Role.TOOL, author), text).with_channel(
        "analysis").with_recipient("assistant")


# -- head tasks: arithmetic, letters, greetings ------------------------------------------------------------------


def arithmetic_question(rng: random.Random) -> tuple[int, str, int, int]:
    """(a, op, b, result) with small operands: sums and differences up to SMALL_MAX, products up to PRODUCT_MAX."""
    op = rng.choices("+-*", OP_WEIGHTS)[0]
    if op == "*":
        a, b = rng.randint(2, PRODUCT_MAX), rng.randint(2, PRODUCT_MAX)
    else:
        a, b = rng.randint(0, SMALL_MAX), rng.randint(0, SMALL_MAX)
        if op == "-" and b > a:
            a, b = b, a
    return a, op, b, OPS[op][1](a, b)


def ask_arithmetic(rng: random.Random, a: int, op: str, b: int) -> str:
    word = OPS[op][0]
    return rng.choice((f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"What's {a} {word} {b}?"))


def worked(a: int, op: str, b: int, c: int) -> str:
    """A fact as the analysis writes it, without spaces: "7+5=12" is 5 tokens (operands, operator, "=", result),
    where "7 + 5 = 12" is 7 with two ambiguous " " tokens, the result predicted at a " " three tokens past the
    operand it depends on."""
    return f"{a}{op}{b}={c}"


def think_arithmetic(effort: str, a: int, op: str, b: int, c: int) -> str:
    fact = worked(a, op, b, c)
    if effort == "low":
        return f"{fact}."
    if effort == "medium":
        return f"The user asks for {a} {op} {b}. {fact}."
    inverse = {"+": worked(c, "-", b, a), "-": worked(c, "+", b, a), "*": worked(c, "/", b, a)}[op]
    return f"The user asks for {a} {op} {b}. Work it out: {fact}. Check: {inverse}. So the answer is {c}."


def arithmetic(rng: random.Random, effort: str) -> Dialogue:
    a, op, b, c = arithmetic_question(rng)
    answer = f"{a} {op} {b} = {c}."
    tools, builtin = None, ()
    roll = rng.random()
    if roll < 0.15:  # tools on offer that the question does not need
        tools = [GET_WEATHER]
    elif roll < 0.3:
        builtin = ("python",)
    return Dialogue("arithmetic", effort, [user(ask_arithmetic(rng, a, op, b))],
                    [analysis(think_arithmetic(effort, a, op, b, c)), final(answer)], tools, builtin, final=answer)


def drill(rng: random.Random, effort: str) -> Dialogue:
    """Several small sums, differences and products at once: the analysis works each out, the final lists them.

    The facts of head arithmetic are memorized, one by one; a drill shows several per sequence.
    """
    questions = [arithmetic_question(rng) for _ in range(rng.randint(*DRILL_SIZE))]
    asked = ", ".join(f"{a} {op} {b}" for a, op, b, _ in questions)
    facts = " ".join(f"{worked(a, op, b, c)}." for a, op, b, c in questions)
    answer = ", ".join(str(c) for *_, c in questions)
    think = {"low": facts, "medium": f"One at a time. {facts}",
             "high": f"There are {len(questions)} questions. I will work out each one in turn. {facts} "
                     f"Now list the results."}[effort]
    question = rng.choice((f"Solve these: {asked}", f"Compute each: {asked}", f"Work these out: {asked}"))
    return Dialogue("drill", effort, [user(question)], [analysis(think), final(answer)], final=answer)


def letters(rng: random.Random, low: int, high: int) -> list[str]:
    """Distinct letters, so each one says where it stands."""
    return rng.sample(LETTERS, rng.randint(low, high))


def reverse(rng: random.Random, effort: str) -> Dialogue:
    chars = letters(rng, 3, 5)
    s, r = " ".join(chars), " ".join(reversed(chars))
    question = rng.choice((f"Reverse the letters: {s}", f"Reverse this sequence: {s}", f"Write {s} backwards."))
    think = {"low": f"Backwards: {r}.",
             "medium": f"The letters are {s}. Reversed, they read {r}.",
             "high": f"The letters are {s}, {len(chars)} in all. Reading from the last to the first gives {r}. "
                     f"That is the reverse."}[effort]
    return Dialogue("reverse", effort, [user(question)], [analysis(think), final(r)], final=r)


def count_think(effort: str, chars: list[str]) -> str:
    steps = ", ".join(f"{ch} {i + 1}" for i, ch in enumerate(chars))
    n = len(chars)
    return {"low": f"{steps}. {n} letters.",
            "medium": f"Count them one by one: {steps}. There are {n} letters.",
            "high": f"I will count the letters in {' '.join(chars)} one by one: {steps}. The last number is {n}, "
                    f"so there are {n} letters."}[effort]


def ask_count(rng: random.Random, s: str) -> str:
    return rng.choice((f"How many letters are in {s}?", f"Count the letters: {s}", f"How many letters does {s} have?"))


def count(rng: random.Random, effort: str) -> Dialogue:
    chars = letters(rng, 2, 6)
    answer = str(len(chars))
    return Dialogue("count", effort, [user(ask_count(rng, " ".join(chars)))],
                    [analysis(count_think(effort, chars)), final(answer)], final=answer)


def greeting(rng: random.Random, effort: str) -> Dialogue:
    think = {"low": "A greeting. Say hello.", "medium": "The user greets me. I will say hello and what I can do.",
             "high": "The user greets me or asks what I am. I should say hello briefly and list what I can do."}
    return Dialogue("greeting", effort, [user(rng.choice(GREETINGS))], [analysis(think[effort]),
                                                                         final(GREETING_REPLY)], final=GREETING_REPLY)


# -- function tools: get_weather / get_time, then the answer from the result ----------------------------------------


def weather_question(rng: random.Random, city: str, tool: str) -> str:
    if tool == "get_time":
        return rng.choice((f"What time is it in {city}?", f"What's the local time in {city}?"))
    return rng.choice((f"What's the weather in {city}?", f"What is the weather like in {city} right now?",
                       f"Is it warm in {city} today?", f"How's the weather in {city}?",
                       f"Tell me the weather in {city}."))


def weather_setup(rng: random.Random) -> tuple[str, str, list[dict], str, str]:
    """(city, tool name, tools declared, the user's question, the JSON arguments of the call)."""
    city = rng.choice(CITIES)
    tools = [GET_WEATHER, GET_TIME] if rng.random() < 0.5 else [GET_WEATHER]
    if rng.random() < 0.5:
        tools = tools[::-1]
    tool = "get_time" if GET_TIME in tools and rng.random() < 0.3 else "get_weather"
    return city, tool, tools, weather_question(rng, city, tool), json.dumps({"city": city})


def weather_call(rng: random.Random, effort: str) -> Dialogue:
    city, tool, tools, question, args = weather_setup(rng)
    think = {"low": f"Call {tool} for {city}.",
             "medium": f"The user asks about {city}. I will call {tool}.",
             "high": f"The user asks about {city}. I have a {tool} tool that takes a city, so I will call it "
                     f"with {city}."}[effort]
    return Dialogue("weather_call", effort, [user(question)], [analysis(think), function_call(tool, args)], tools,
                    call=(f"functions.{tool}", args))


def tool_result(rng: random.Random, city: str, tool: str) -> tuple[str, str, str]:
    """(the tool's output as the client sends it back, what the analysis says about it, the final answer)."""
    if tool == "get_time":
        hhmm = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        return json.dumps({"city": city, "time": hhmm}), f"the time is {hhmm}", f"It is {hhmm} in {city}."
    temp, cond = rng.randint(-10, 38), rng.choice(CONDITIONS)
    output = json.dumps({"city": city, "temperature_c": temp, "condition": cond}) if rng.random() < 0.7 \
        else f"{cond}, {temp}°C"
    return output, f"it is {temp}°C and {cond}", f"It is {temp}°C and {cond} in {city}."


def weather_answer(rng: random.Random, effort: str) -> Dialogue:
    city, tool, tools, question, args = weather_setup(rng)
    output, fact, answer = tool_result(rng, city, tool)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": args}}]}
    if rng.random() < 0.3:  # some clients send the reasoning back
        call["reasoning_content"] = f"The user asks about {city}. I will call {tool}."
    messages = [user(question), call, {"role": "tool", "tool_call_id": "call_1", "content": output}]
    think = {"low": f"The tool says {fact}.", "medium": f"The tool says {fact} in {city}.",
             "high": f"{tool} answered for {city}: {fact}. I will tell the user."}[effort]
    return Dialogue("weather_answer", effort, messages, [analysis(think), final(answer)], tools, final=answer)


# -- built-in tools: python for large products, browser.search for look-ups ----------------------------------------


def large_product(rng: random.Random) -> tuple[int, int]:
    a, b = rng.randint(*LARGE_RANGE), rng.randint(*LARGE_RANGE)
    return a, b


def python_turn(rng: random.Random, effort: str) -> tuple[list[dict], list[Message], Message, int, int]:
    a, b = large_product(rng)
    think = {"low": "Too large to do in my head. Use python.",
             "medium": f"{a} * {b} is a large product. I will compute it with python.",
             "high": f"The user asks for {a} * {b}. Both numbers are large, so multiplying in my head is "
                     f"error-prone. I will run it in python."}[effort]
    call = builtin_call("python", f"print({a} * {b})", "code")
    return [user(ask_arithmetic(rng, a, "*", b))], [analysis(think)], call, a, b


def python_call(rng: random.Random, effort: str) -> Dialogue:
    messages, thoughts, call, _, _ = python_turn(rng, effort)
    return Dialogue("python_call", effort, messages, thoughts + [call], builtin=("python",),
                    call=("python", call.content[0].text))


def python_answer(rng: random.Random, effort: str) -> Dialogue:
    messages, thoughts, call, a, b = python_turn(rng, effort)
    c = a * b
    answer = f"{a} * {b} = {c}."
    reply = [final(answer)] if effort == "low" else [analysis(f"python printed {c}."), final(answer)]
    return Dialogue("python_answer", effort, messages, reply, builtin=("python",),
                    history=thoughts + [call, builtin_result("python", f"{c}\n")], final=answer)


def search_topic(rng: random.Random) -> tuple[str, str]:
    """(what to look up, the sentence the search finds).

    Its numbers have one or two digits: o200k splits longer ones into 3-digit tokens, a thousand of them, each a rare
    target that the tiny model copies poorly (python's products already teach that).
    """
    city, kind = rng.choice(CITIES), rng.randrange(3)
    if kind == 0:
        return f"the population of {city}", f"{city} has {rng.randint(1, 40)} million inhabitants."
    if kind == 1:
        return f"the founding of {city}", f"{city} was founded in the {rng.randint(4, 19)}th century."
    return f"the area of {city}", f"{city} covers {rng.randint(10, 99)} square kilometres."


def search_turn(rng: random.Random, effort: str) -> tuple[list[dict], list[Message], Message, str, str]:
    topic, fact = search_topic(rng)
    question = rng.choice((f"Look up {topic}.", f"Search the web for {topic}.", f"Can you find {topic} online?"))
    think = {"low": f"Search for {topic}.", "medium": f"I need to look this up. I will search for {topic}.",
             "high": f"The user wants {topic}. I do not know it reliably, so I will search the web for "
                     f"{topic}."}[effort]
    call = builtin_call("browser.search", json.dumps({"query": topic}), "<|constrain|>json")
    return [user(question)], [analysis(think)], call, topic, fact


def search_call(rng: random.Random, effort: str) -> Dialogue:
    messages, thoughts, call, _, _ = search_turn(rng, effort)
    return Dialogue("search_call", effort, messages, thoughts + [call], builtin=("browser",),
                    call=("browser.search", call.content[0].text))


def search_answer(rng: random.Random, effort: str) -> Dialogue:
    messages, thoughts, call, topic, fact = search_turn(rng, effort)
    page = f"[0] Search results for `{topic}`\nL0: {fact}"
    reply = [final(fact)] if effort == "low" else [analysis(f"The result says: {fact}"), final(fact)]
    return Dialogue("search_answer", effort, messages, reply, builtin=("browser",),
                    history=thoughts + [call, builtin_result("browser.search", page)], final=fact)


# -- structured output: a JSON object when the developer message gives a response format ----------------------------


def response_format(key: str) -> str:
    """Harmony's response-format section (what the developer message carries), here as the system instructions."""
    schema = {"type": "object", "properties": {key: {"type": "integer"}}, "required": [key]}
    return f"# Response Formats\n\n## answer\n\n{json.dumps(schema)}"


def json_answer(rng: random.Random, effort: str) -> Dialogue:
    key = rng.choice(JSON_KEYS)
    if rng.random() < 0.7:
        a, op, b, value = arithmetic_question(rng)
        question, think = ask_arithmetic(rng, a, op, b), think_arithmetic(effort, a, op, b, value)
    else:
        chars = letters(rng, 2, 6)
        question, think, value = ask_count(rng, " ".join(chars)), count_think(effort, chars), len(chars)
    answer = json.dumps({key: value})
    think += f" Reply with JSON: {key} = {value}." if effort != "low" else ""
    messages = [{"role": "system", "content": response_format(key)}, user(question)]
    return Dialogue("json", effort, messages, [analysis(think), final(answer)], final=answer)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


TASKS = {"arithmetic": arithmetic, "drill": drill, "reverse": reverse, "count": count, "greeting": greeting,
         "weather_call": weather_call, "weather_answer": weather_answer, "python_call": python_call,
         "python_answer": python_answer, "search_call": search_call, "search_answer": search_answer,
         "json": json_answer}
# share of each task in the corpus: the tasks the end-to-end tests hold to a threshold get the most. Head arithmetic
# is memorized fact by fact, so it comes mostly as drills (6-10 facts in ~190 tokens, against 1-3 in ~140 for a single
# question; measured on this architecture, 600 steps of arithmetic alone reach 0.89 with 60% drills and 0.70 with
# 20%); the function calls and the answers from python's and the browser's results keep the shares that taught
# copying from the prompt and from a tool message (the browser's system message alone is ~450 tokens)
MIX = {"arithmetic": 0.08, "drill": 0.25, "reverse": 0.02, "count": 0.03, "greeting": 0.02, "weather_call": 0.15,
       "weather_answer": 0.1, "python_call": 0.05, "python_answer": 0.08, "search_call": 0.02,
       "search_answer": 0.06, "json": 0.14}


def draw(rng: random.Random, task: str) -> Dialogue:
    """One dialogue of `task`; some get a leading system prompt (it becomes the developer instructions)."""
    dialogue = TASKS[task](rng, rng.choice(EFFORTS))
    if task != "json" and rng.random() < 0.1:
        dialogue.messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return dialogue


def dialogues(seed: int, n: int, mix: dict[str, float] | None = None) -> list[Dialogue]:
    """`n` dialogues, the tasks drawn by their share in `mix` (default MIX), deterministic for `seed`."""
    rng = random.Random(seed)
    mix = mix or MIX
    names, weights = list(mix), list(mix.values())
    return [draw(rng, rng.choices(names, weights)[0]) for _ in range(n)]
