"""Structured outputs and enforced tool choice, as the engine's `StructuredOutputs` (engine.structured.params).

Flow: chat `response_format` / Responses `text.format` -> `answer_grammar` (json_schema: its schema checked as JSON
Schema and for keywords the grammar would not enforce, a 400 naming the field) -> with the tools the prompt offers and
`tool_choice`, `constraint(...)` -> `StructuredOutputs` in `GenerateRequest.sampling["structured_outputs"]`, or
None when nothing is constrained. The harmony scope: the analysis message stays free; the constraint holds the final
channel (the answer's grammar) and the tool-call header and arguments:

  tool_choice "required" / named: no final answer; a call to one of the offered functions (the named one), its
      arguments valid against the function's `parameters`.
  "none": no call; the final answer only.
  "auto" / absent: the final answer, or a call to an offered function, whose arguments are held to `parameters`
      when the function is `strict`.
"""

from cluster.errors import bad_request
from cluster.protocol.common import json_schema_of
from engine.structured.grammar import check_schema_keywords
from engine.structured.params import MAX_SPEC_BYTES, Grammar, StructuredOutputs


def answer_grammar(kind: str, schema: dict | None, where: str, schema_field: str) -> Grammar:
    """The answer's grammar for a response format of `kind` ("text", "json_object", "json_schema")."""
    if kind == "text":
        return Grammar("text")
    if kind == "json_object":
        return Grammar("json_object", field=where)
    return schema_grammar(schema if schema is not None else {}, schema_field, object_only=False)


def schema_grammar(schema: dict, field: str, object_only: bool = True) -> Grammar:
    """A JSON schema as a grammar: valid JSON Schema, only enforceable keywords, not too large (400s name `field`)."""
    if object_only:
        json_schema_of(schema, field)
    else:
        _check_valid(schema, field)
    try:
        check_schema_keywords(schema, field)
        return Grammar.json_schema(schema, field)
    except ValueError as err:
        message = str(err)
        param = message.split(" ", 1)[0]
        raise bad_request(message, param if param.startswith(field) else field) from None


def constraint(answer: Grammar, tools: list[dict] | None, choice, strict: set[str], fields: dict[str, str]
               ) -> StructuredOutputs | None:
    """The request's constraint (None: nothing to enforce). `tools`: the offered tools after tool_choice (chat
    shape); `strict`: names of the functions declared strict; `fields`: function name -> its parameters' field."""
    forced = choice == "required" or (choice is not None and not isinstance(choice, str))
    if answer.free and not forced and choice != "none" and not strict:
        return None
    functions = []
    for tool in tools or []:
        fn = tool["function"]
        params, field = fn.get("parameters"), fields[fn["name"]]
        if forced or fn["name"] in strict:
            args = schema_grammar(params, field) if params is not None else Grammar("json_object", field=field)
        else:
            args = Grammar("text")
        functions.append((fn["name"], args))
    return StructuredOutputs(final=None if forced else answer, functions=tuple(functions))


def _check_valid(schema, field: str) -> None:
    if not isinstance(schema, dict):
        raise bad_request(f"{field} must be a JSON Schema object", field)
    import json  # noqa: PLC0415

    if len(json.dumps(schema)) > MAX_SPEC_BYTES:
        raise bad_request(f"{field} is larger than {MAX_SPEC_BYTES} bytes as JSON; send a smaller schema", field)
    from jsonschema import Draft202012Validator  # noqa: PLC0415
    from jsonschema.exceptions import SchemaError  # noqa: PLC0415

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        raise bad_request(f"{field}{at} is not a valid JSON Schema: {err.message}", field + at) from None
