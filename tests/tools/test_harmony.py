"""Built-in calls and answers render as harmony says, checked against openai-harmony's own rendering of the same
messages built by hand (system namespaces, `assistant to=python` calls ending in <|call|>, answers authored by the
tool, analysis-channel calls dropped before a later final answer)."""

import pytest
from openai_harmony import Author, Conversation, Message, ReasoningEffort, Role, SystemContent, ToolNamespaceConfig

from cluster.protocol.responses import input_to_messages
from cluster.tools.harmony import answer_ids, browser_namespace, python_namespace, render_prompt
from engine.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model):
    return Tokenizer.load(tiny_model)


def _by_hand(tok, messages):
    return tok.encoding.render_conversation_for_completion(Conversation.from_messages(messages), Role.ASSISTANT)


def test_a_python_call_and_its_answer(tok):
    items = [{"role": "user", "content": "Sum?"},
             {"type": "code_interpreter_call", "id": "ci_1", "code": "print(3)", "status": "completed",
              "outputs": [{"type": "logs", "logs": "3\n"}]}]
    ours = render_prompt(tok, input_to_messages(items, None), "low", None, [python_namespace(30)], [])
    system = SystemContent.new().with_reasoning_effort(ReasoningEffort.LOW).with_tools(python_namespace(30))
    expected = _by_hand(tok, [
        Message.from_role_and_content(Role.SYSTEM, system), Message.from_role_and_content(Role.USER, "Sum?"),
        Message.from_role_and_content(Role.ASSISTANT, "print(3)").with_channel("analysis").with_recipient("python")
        .with_content_type("code"),
        Message.from_author_and_content(Author.new(Role.TOOL, "python"), "3\n").with_channel("analysis")
        .with_recipient("assistant")])
    assert ours == expected


def test_analysis_calls_before_a_final_answer_are_dropped(tok):
    items = [{"role": "user", "content": "Find it."},
             {"type": "web_search_call", "id": "ws_1", "action": {"type": "search", "query": "q"},
              "status": "completed"},
             {"type": "message", "role": "assistant", "content": "Found."},
             {"role": "user", "content": "Thanks."}]
    ours = render_prompt(tok, input_to_messages(items, None), "low", None, [browser_namespace()], [])
    text = tok.decode(ours)
    assert "browser.search" not in text.split("namespace browser")[-1].split("} // namespace browser")[-1]
    assert text.endswith("<|start|>user<|message|>Thanks.<|end|><|start|>assistant")


def test_the_answer_continues_the_ids_already_run(tok):
    ids = answer_ids(tok, "python", "analysis", "42\n")
    assert tok.decode(ids) == "<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|><|start|>assistant"


def test_an_unanswered_call_stays_open_only_when_last(tok):
    call = {"type": "code_interpreter_call", "id": "ci_1", "code": "x", "status": "in_progress"}
    last = input_to_messages([{"role": "user", "content": "u"}, call], None)
    assert "builtin_call" in last[-1]
    middle = input_to_messages([{"role": "user", "content": "u"}, call, {"role": "user", "content": "v"}], None)
    assert middle[2]["builtin_result"]["author"] == "python" and middle[2]["content"].startswith("error: this call")


def test_the_namespace_says_what_the_sandbox_is(tok):
    description = python_namespace(12).description
    assert "stateful" in description and "12.0 seconds" in description and "disabled" in description
    assert isinstance(browser_namespace(), ToolNamespaceConfig)
