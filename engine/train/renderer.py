"""Dialogue -> token ids, with the very prompt layout the server gives the model at inference.

Flow: the chat (OpenAI messages, function tools, effort) -> `engine.text.tokenizer.build_harmony_messages`, the same
conversion `Tokenizer.render_chat` runs for every request -> built-in tools, when the dialogue has any, declared in
the system message the harmony way (`SystemContent.with_python_tool()` / `with_browser_tool()`), and the built-in
tool loop's messages appended -> the ids of each message -> the prompt (ending `<|start|>assistant`) and the target that
follows it (ending `<|return|>` or `<|call|>`).

Harmony renders a conversation as the concatenation of its messages, and a message as its header, its encoded
text and an end token; `render` builds the ids that way from cached headers (harmony takes ~0.5 ms a message;
a corpus has ~10^5). `render_reference` renders the whole conversation with harmony, and with
`Tokenizer.render_chat` where the server would; `verify` checks that all of them agree.
"""

from dataclasses import dataclass

from openai_harmony import Conversation, Message, RenderConversationConfig, RenderOptions, Role, SystemContent

from engine.text.tokenizer import REASONING_EFFORTS, Tokenizer, build_harmony_messages
from engine.text.vocab import CALL, RETURN, START
from engine.train.corpus import Dialogue

KEEP_ANALYSIS = RenderConversationConfig(auto_drop_analysis=False)  # the reply's analysis is part of the target


@dataclass
class Rendered:
    prompt: list[int]  # what the server feeds the model, ending with <|start|>assistant
    target: list[int]  # what the model should generate next, ending with <|return|> or <|call|>


class Renderer:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer  # the o200k_harmony tokenizer the engine serves with
        self._headers: dict[tuple, tuple[list[int], int]] = {}  # message header -> (ids up to <|message|>, end id)
        self._whole: dict[tuple, list[int]] = {}  # system/developer message -> its ids (few distinct ones)
        self._assistant = self.tokenizer.encode("assistant")  # the role after the prompt's final <|start|>

    def prompt_messages(self, dialogue: Dialogue) -> list[Message]:
        """The harmony messages of the prompt: the server's conversion, plus built-in tools and their loop."""
        messages = build_harmony_messages(dialogue.messages, dialogue.effort, dialogue.tools)
        if dialogue.builtin:
            messages[0] = Message.from_role_and_content(Role.SYSTEM, builtin_system(dialogue.effort, dialogue.builtin))
        return messages + dialogue.history

    def render(self, dialogue: Dialogue) -> Rendered:
        """Prompt and target ids, message by message."""
        functions = bool(dialogue.tools)
        prompt = [t for m in self.prompt_messages(dialogue) for t in self.message_ids(m, functions)]
        reply = [t for m in dialogue.reply for t in self.message_ids(m, functions)]
        reply[-1] = CALL if dialogue.reply[-1].recipient else RETURN  # how a training conversation ends
        return Rendered(prompt + [START] + self._assistant, reply[1 + len(self._assistant):])

    def message_ids(self, message: Message, functions: bool) -> list[int]:
        """harmony's rendering of one message: header, encoded text, end token."""
        if message.author.role in (Role.SYSTEM, Role.DEVELOPER):
            key = (message.to_json(), functions)
            if key not in self._whole:
                self._whole[key] = self._render_one(message, functions)
            return self._whole[key]
        header, end = self._header(message, functions)
        return header + self.tokenizer.encode(message.content[0].text) + [end]

    def _header(self, message: Message, functions: bool) -> tuple[list[int], int]:
        author = message.author
        key = (author.role, author.name, message.channel, message.recipient, message.content_type, functions)
        if key not in self._headers:
            empty = message.model_copy(update={"content": []}).adding_content("")
            ids = self._render_one(empty, functions)
            self._headers[key] = ids[:-1], ids[-1]
        return self._headers[key]

    def _render_one(self, message: Message, functions: bool) -> list[int]:
        return self.tokenizer.encoding.render(message, RenderOptions(conversation_has_function_tools=functions))

    def render_reference(self, dialogue: Dialogue) -> Rendered:
        """The same through harmony's whole-conversation rendering (slow; the oracle of `render`)."""
        encoding, messages = self.tokenizer.encoding, self.prompt_messages(dialogue)
        prompt = encoding.render_conversation_for_completion(Conversation.from_messages(messages), Role.ASSISTANT)
        ids = encoding.render_conversation_for_training(Conversation.from_messages(messages + dialogue.reply),
                                                        KEEP_ANALYSIS)
        assert ids[: len(prompt)] == prompt, f"{dialogue.task}: the prompt is not a prefix of the conversation"
        return Rendered(prompt, ids[len(prompt):])

    def verify(self, dialogue: Dialogue) -> None:
        """Raises AssertionError unless `render`, harmony and (where it applies) the server's render_chat agree."""
        fast, reference = self.render(dialogue), self.render_reference(dialogue)
        assert fast == reference, f"{dialogue.task}: message-by-message rendering differs from harmony's"
        if not dialogue.builtin and not dialogue.history:
            served = self.tokenizer.render_chat(dialogue.messages, dialogue.effort, dialogue.tools)
            assert fast.prompt == served, f"{dialogue.task}: the corpus prompt differs from the server's"


def builtin_system(effort: str, builtin: tuple[str, ...]) -> SystemContent:
    """The system message with harmony's built-in tool namespaces ("python", "browser") declared."""
    content = SystemContent.new().with_reasoning_effort(REASONING_EFFORTS[effort])
    if "browser" in builtin:
        content = content.with_browser_tool()
    if "python" in builtin:
        content = content.with_python_tool()
    return content
