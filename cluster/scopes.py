"""A key's scopes applied to a request: what it may call, and the bounds it may ask for.

Flow: the front door (cluster/frontdoor.py) asks `permit(key, route)` for every call (route: chat, completions,
responses, tokenize, models) and `bound(key, req, model_effort)` for a generation -> a model, route or built-in tool
outside the key's scopes, a max_tokens above its `max_tokens` or a reasoning effort above its
`max_reasoning_effort`: 403 / PERMISSION_DENIED naming what is not allowed (and the field) -> within them: a request
that did not say max_tokens gets the key's bound, and one that did not say its reasoning effort gets the model's
default or the key's bound, whichever is lower.
"""

from cluster.errors import permission_denied
from cluster.keys import EFFORTS, Key

ROUTE_OF_KIND = {"chat": "chat", "completion": "completions", "response": "responses"}  # GenerateRequest.kind -> route


def permit(key: Key, route: str) -> None:
    allowed = key.scopes.routes
    if allowed is not None and route not in allowed:
        raise permission_denied(key.name, f"call the {route} route (its routes: {allowed})", None)


def bound(key: Key, req, model_effort: str) -> None:
    """Checks `req` (a GenerateRequest) against the key's scopes and fills in the bounds it did not give."""
    scopes = key.scopes
    if scopes.models is not None and req.model not in scopes.models:
        raise permission_denied(key.name, f"use the model {req.model!r} (its models: {scopes.models})", "model")
    asked = [name for name in ("python", "browser", "mcp") if (req.builtin or {}).get(name)]
    refused = [name for name in asked if scopes.tools is not None and name not in scopes.tools]
    if refused:
        raise permission_denied(key.name, f"ask the server to run the tools {refused} (its tools: {scopes.tools})",
                                "tools")
    _bound_tokens(key, req)
    _bound_effort(key, req, model_effort)


def _bound_tokens(key: Key, req) -> None:
    cap = key.scopes.max_tokens
    if cap is None:
        return
    asked = req.sampling.get("max_tokens")
    if asked is None:
        req.sampling["max_tokens"] = cap
    elif asked > cap:
        param = req.renames.get("max_tokens", "max_tokens")
        raise permission_denied(key.name, f"ask for {param} {asked}: its limit is {cap}", param)


def _bound_effort(key: Key, req, model_effort: str) -> None:
    cap = key.scopes.max_reasoning_effort
    if cap is None or req.kind == "completion":
        return
    asked = req.reasoning_effort
    if asked is None:
        req.reasoning_effort = min(model_effort, cap, key=EFFORTS.index)
    elif EFFORTS.index(asked) > EFFORTS.index(cap):
        param = "reasoning.effort" if req.kind == "response" else "reasoning_effort"
        raise permission_denied(key.name, f"ask for {param} {asked!r}: its limit is {cap!r}", param)
