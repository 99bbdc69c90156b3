"""Grammar checks and compilation (xgrammar, real o200k vocabulary): keywords the grammar would not enforce, bad
patterns and compile timeouts are ValueErrors naming the request field; compiled grammars are cached."""

import time

import pytest

from engine.structured import grammar
from engine.structured.params import MAX_SPEC_BYTES, Grammar, StructuredOutputs
from engine.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def compiler(tiny_model):
    return grammar.compiler_for(Tokenizer.load(tiny_model), 201088)


@pytest.mark.parametrize("schema, field", [
    ({"type": "object", "not": {}}, "f.not"),
    ({"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}, "f.items.contentEncoding"),
    ({"anyOf": [{"type": "string"}, {"type": "integer", "multipleOf": 3}]}, "f.anyOf[1].multipleOf"),
    ({"$defs": {"a": {"type": "object", "dependentRequired": {}}}}, "f.$defs.a.dependentRequired"),
])
def test_unenforced_keywords_are_refused_where_they_are(schema, field):
    with pytest.raises(ValueError, match="^" + field.replace("[", r"\[").replace("$", r"\$") + " is not supported"):
        grammar.check(Grammar.json_schema(schema, "f"))


def test_sizes_depth_and_patterns_are_checked():
    with pytest.raises(ValueError, match=f"^f is .* at most {MAX_SPEC_BYTES} bytes"):
        Grammar.json_schema({"description": "x" * MAX_SPEC_BYTES}, "f")
    deep = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(ValueError, match="nests deeper"):
        grammar.check(Grammar.json_schema(deep, "f"))
    with pytest.raises(ValueError, match="^r is not a valid regular expression"):
        grammar.check(Grammar("regex", "(unclosed", "r"))
    with pytest.raises(ValueError, match="^tool_choice requires a tool call"):
        StructuredOutputs(final=None)


def test_uncompilable_schema_names_the_field(compiler):
    with pytest.raises(ValueError, match="^s cannot be compiled"):
        compiler.compile(Grammar.json_schema({"type": "string", "pattern": "(?<=a)b"}, "s"))


def test_compile_timeout_names_the_field_and_the_cache_answers_at_once(tiny_model, compiler):
    tokenizer = Tokenizer.load(tiny_model)
    fresh = Grammar.json_schema({"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 30}
                                                                  for i in range(60)}}, "text.format.schema")
    with pytest.raises(ValueError, match=r"^text\.format\.schema took longer than 1e-06 s"):
        grammar.compile_within(tokenizer, 201088, [fresh], 1e-6)
    grammar.compile_within(tokenizer, 201088, [fresh], 60)  # finishes (it kept compiling off the caller's thread)
    start = time.perf_counter()
    grammar.compile_within(tokenizer, 201088, [fresh], 60)
    assert time.perf_counter() - start < 0.5
