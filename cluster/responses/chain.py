"""A stored conversation as the model sees it: the chain of responses (`previous_response_id`) -> chat messages.

Flow: `Store.chain(id, owner)` gives the responses oldest first -> each turn's input items, then its output items (an
output item replaces an input item with the same id: a built-in call the server ran when a request ended with it)
-> `items_to_messages` with the turn's `hidden` tool results (the exact header and text the model saw) -> messages
the replica renders with harmony, where earlier turns' reasoning is dropped as harmony prescribes (analysis before
the last final answer). `instructions` are not carried over (as OpenAI): the new request's own are put first.
"""

from cluster.protocol.response_items import mcp_listings
from cluster.protocol.responses import _Input, items_to_messages
from cluster.protocol.common import validate
from cluster.responses.store import StoredResponse


def turn_items(r: StoredResponse) -> list[dict]:
    """One stored turn's items in order: its input items, then its output items."""
    outputs = r.body.get("output") or []
    ran = {o.get("id") for o in outputs}
    return [i for i in r.input_items if i.get("id") not in ran] + list(outputs)


def chain_messages(chain: list[StoredResponse]) -> list[dict]:
    messages = []
    for r in chain:
        items = turn_items(r)
        if items:
            messages += items_to_messages(items, r.hidden)
    return messages


def chain_listings(chain: list[StoredResponse]) -> dict[str, list[dict]]:
    """server_label -> tools, from the mcp_list_tools items of the conversation (the latest wins)."""
    listings: dict = {}
    for r in chain:
        items = turn_items(r)
        if items:
            listings.update(mcp_listings(validate(_Input, {"input": items}).input))
    return listings
