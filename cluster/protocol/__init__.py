"""OpenAI request parsing: JSON body -> validated `GenerateRequest`, the one object a front door hands a replica.

Flow: bytes -> JSON (400 on invalid JSON) -> the endpoint's pydantic model (common.py: strict types, the OpenAI API's
ranges and nullability; fields we do not support refused by name; 400 naming the field) -> sampling options checked
by constructing `engine.SamplingParams` (400 naming the field) -> `GenerateRequest` (request.py). The checks that
need the model (prompt length vs the context, harmony rendering) run in the replica (`cluster.server`) and come back
as the same 400s. Modules: request (GenerateRequest, routing keys), common (base model, errors, sampling fields),
chat, completions, responses (one endpoint each), schemas (the response objects, for /openapi.json).
"""

import json

from cluster.errors import bad_request
from cluster.protocol.chat import ChatRequest, apply_tool_choice, parse_chat
from cluster.protocol.completions import CompletionRequest, parse_completion
from cluster.protocol.request import GenerateRequest, prefix_hashes, routing_text
from cluster.protocol.responses import ResponsesRequest, input_to_messages, parse_responses


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"The request body is not valid JSON: {err}", "body", "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object", "body")
    return data


__all__ = ["ChatRequest", "CompletionRequest", "GenerateRequest", "ResponsesRequest", "apply_tool_choice",
           "input_to_messages", "parse_chat", "parse_completion", "parse_json", "parse_responses", "prefix_hashes",
           "routing_text"]
