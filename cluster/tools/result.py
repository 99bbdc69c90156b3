"""What a tool call gives back: the text the model reads and what the call's output item shows."""

from dataclasses import dataclass, field


@dataclass
class ToolResult:
    text: str  # the tool's answer as the model reads it (a harmony tool message)
    failed: bool = False  # the call failed (its item's status: failed)
    fields: dict = field(default_factory=dict)  # output item fields: outputs (python), action (browser), output/error
