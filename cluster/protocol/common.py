"""What the OpenAI endpoints share: the strict request base model, the 400s it gives, the sampling fields and their
published ranges, and the fields we refuse by name.

Flow: `validate(Model, body)` -> fields the server knows but does not support get a 400 that names them and says
why (`refuse_unsupported`); unknown fields a 400 naming them; then the pydantic model (strict: no silent coercion,
the OpenAI API's ranges and nullability) -> the first problem as a 400 whose `param` is the field path
(`messages[0].content`) -> the endpoint's parser builds the `GenerateRequest`, checking the sampling options by
constructing `engine.SamplingParams` (`check_sampling`, 400 naming the request's field).
"""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from cluster.errors import ApiError, bad_request, from_value_error
from engine.sampling_params import MAX_N, SamplingParams

INT64 = {"ge": -(1 << 63), "le": (1 << 63) - 1}
_TYPES = {"str", "int", "float", "bool", "none", "list", "dict", "bytes"}  # union members pydantic puts in locations
# the tags of the discriminated unions (chat messages by role, Responses input items by type), which pydantic puts
# in an error's location after the list index
_TAGS = {"system", "developer", "user", "assistant", "tool", "message", "reasoning", "function_call",
         "function_call_output", "code_interpreter_call", "web_search_call", "mcp_call", "mcp_list_tools", "function_tool",
         "code_interpreter", "web_search", "mcp"}


def _false(value: bool) -> bool:
    if value:
        raise ValueError("only false is supported")
    return value


# a boolean only false may take (a feature the server does not offer, named by OpenAI's field)
Off = Annotated[bool, AfterValidator(_false), WithJsonSchema({"type": "boolean", "enum": [False]})]


class ApiModel(BaseModel):
    """A request object: unknown fields are refused (by name), types are strict ("1" is not 1, true is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -- the sampling fields (ranges as the OpenAI API publishes them; where the server takes less, its limit) --------
Temperature = Annotated[float | None, Field(None, ge=0, le=2, description="0 = greedy; OpenAI's range [0, 2]")]
TopP = Annotated[float | None, Field(None, gt=0, le=1, description="nucleus sampling, (0, 1]")]
Penalty = Annotated[float | None, Field(None, ge=-2, le=2, description="OpenAI's range [-2, 2]")]
N = Annotated[int | None, Field(None, ge=1, le=MAX_N, description=f"completions per prompt, at most {MAX_N}")]
Seed = Annotated[int | None, Field(None, **INT64, description="per-request seed (a 64-bit integer)")]
MaxTokens = Annotated[int | None, Field(None, ge=1, description="most tokens to generate")]
Stop = Annotated[str | list[Annotated[str, Field(min_length=1)]] | None,
                 Field(None, description="up to 4 stop strings", json_schema_extra={"maxItems": 4})]
LogitBias = Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]] | None,
                      Field(None, description="token id (as a string) -> bias in [-100, 100]")]
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None,
                     Field(None, description="up to 16 key-value pairs, echoed back", max_length=16)]


class StreamOptions(ApiModel):
    include_usage: bool | None = None
    include_obfuscation: Off | None = Field(None, description="only false: events are not padded")


class SamplingFields(ApiModel):
    """Fields of /v1/chat/completions and /v1/completions that become SamplingParams (plus our extensions)."""

    model: str = Field(min_length=1)
    temperature: Temperature = None
    top_p: TopP = None
    n: N = None
    seed: Seed = None
    stop: Stop = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="an end-user id (for the operator's records)")
    # extensions, as in vLLM
    top_k: int | None = Field(None, ge=-1, description="extension: keep the k most likely tokens (0 or -1: off)")
    min_p: float | None = Field(None, ge=0, le=1, description="extension: min-p sampling, [0, 1]")
    repetition_penalty: float | None = Field(None, gt=0, description="extension: HF's repetition penalty (> 0)")
    ignore_eos: bool | None = Field(None, description="extension: generate past the end of the turn")
    min_tokens: int | None = Field(None, ge=0, description="extension: stop tokens are banned until this many")


# -- validation -----------------------------------------------------------------------------------------------------


def validate(model_cls: type[ApiModel], data: dict, unsupported: dict[str, str] | None = None) -> ApiModel:
    """The request as `model_cls`, or a 400 naming the first field at fault and what to send instead."""
    unsupported = unsupported or {}
    refuse_unsupported(data, unsupported)
    data = {k: v for k, v in data.items() if k not in unsupported or k in model_cls.model_fields}  # null: accepted
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise _first_problem(err) from None


def refuse_unsupported(data: dict, unsupported: dict[str, str]) -> None:
    """`unsupported`: field -> why; a field set to anything but null, false or an empty list gets its 400 (those
    three mean "not used", which is what the server does)."""
    for name, why in unsupported.items():
        value = data.get(name)
        if value is not None and value is not False and value != []:
            raise bad_request(f"{name} is not supported: {why}", name, "unsupported_parameter")


def _first_problem(err: ValidationError) -> ApiError:
    """One 400 for the most specific problem: a union field fails once per member, so the deepest location wins,
    and the members that failed there are listed together."""
    errors = [(e, _clean(e["loc"])) for e in err.errors()]
    first, loc = max(errors, key=lambda pair: len(pair[1]))
    param = _path(loc)
    if first["type"] == "extra_forbidden":
        return bad_request(f"{param} is not a field of this endpoint (see /openapi.json for the fields it takes)",
                           param, "unknown_parameter")
    if first["type"] == "missing":
        return bad_request(f"{param} is required", param)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found", "invalid_item_type"):
        tag = str((first.get("ctx") or {}).get("discriminator", "'type'")).strip("'")
        tag = tag if tag.isidentifier() else "type"
        param = f"{param}.{tag}" if param else tag  # the field that picks the kind of object
    wants = [_message(e) for e, at in errors if at == loc]
    got = "" if first["type"] == "value_error" else f" (got {_short(first.get('input'))})"
    message = " or ".join(dict.fromkeys(wants))
    return bad_request(f"{param}: {message}{got}" if param else message + got, param or None)


def _message(error: dict) -> str:
    return error["msg"].removeprefix("Value error, ")


def _clean(loc: tuple) -> tuple:
    """The field path of an error location, without the union members and tags pydantic adds."""
    out = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", part) and part not in _TYPES \
                and not (out and isinstance(out[-1], int) and part in _TAGS):
            out.append(part)
    return tuple(out)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_sampling(sampling: dict, renames: dict) -> None:
    """Every check SamplingParams can make without the model; the error names the request's field."""
    try:
        SamplingParams(**{"max_tokens": 1, **sampling})
    except ValueError as err:
        raise from_value_error(err, renames) from None


def sampling_of(req: SamplingFields, names: tuple[str, ...]) -> dict:
    """SamplingParams keyword arguments from the request fields `names` that are set."""
    sampling = {k: getattr(req, k) for k in names if getattr(req, k, None) is not None}
    if isinstance(sampling.get("stop"), list) and len(sampling["stop"]) > 4:
        raise bad_request(f"stop takes at most 4 strings, got {len(sampling['stop'])}", "stop")
    if getattr(req, "logit_bias", None):
        try:
            sampling["logit_bias"] = {int(k): v for k, v in req.logit_bias.items()}
        except ValueError:
            raise bad_request("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
    return sampling


def include_usage(req) -> bool:
    options = req.stream_options
    if options is not None and not req.stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    return bool(options and options.include_usage)


def json_schema_of(value: Any, where: str) -> dict | None:
    """A tool's `parameters`: None, or a valid JSON Schema (Draft 2020-12) object; a 400 naming `where` otherwise."""
    if value is None:
        return None
    from jsonschema import Draft202012Validator  # noqa: PLC0415
    from jsonschema.exceptions import SchemaError  # noqa: PLC0415

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as err:
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        raise bad_request(f"{where}{at} is not a valid JSON Schema: {err.message}", where + at) from None
    if value.get("type", "object") != "object":
        raise bad_request(f"{where}.type must be 'object' (the arguments are a JSON object), got "
                          f"{value.get('type')!r}", f"{where}.type")
    return value
