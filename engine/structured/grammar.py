"""Grammars compiled with xgrammar, once per (grammar, vocabulary) in a process, and checked before they run.

Flow: `compiler_for(tokenizer, vocab_size)` (one per process and vocabulary: xgrammar's `TokenizerInfo` of the
o200k vocabulary, special tokens left out so no grammar can reach them) -> `check(grammar)` (keywords xgrammar would
ignore, bad regexes: a ValueError naming the request field) -> `compile(grammar)` (cached) -> `matcher(grammar)`:
a fresh xgrammar `GrammarMatcher` for one request. `compile_within(...)` runs the compilations on a small thread
pool and gives up after a timeout (ValueError naming the field), so an expensive grammar never stalls the engine
loop: `AsyncLLM.generate` awaits it before the request is queued, and the worker then finds it in the cache.
"""

import functools
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from engine.structured.params import Grammar

# JSON Schema keywords xgrammar enforces (or that only annotate); any other is refused rather than ignored
ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum", "const",
            "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "minLength", "maxLength", "pattern", "format", "minItems", "maxItems",
            "minProperties", "maxProperties", "patternProperties", "propertyNames"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly", "strict", "nullable"}
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "propertyNames")
MAX_DEPTH = 32  # deepest schema nesting accepted
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptoss-grammar")
_LOCK = threading.Lock()
_COMPILERS: dict[int, "GrammarCompiler"] = {}  # vocab size -> the process's compiler for it


def check_schema_keywords(schema, field: str, depth: int = 0) -> None:
    """Refuse a keyword the grammar would not enforce (naming where it is), and absurd nesting."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{field} must be a JSON schema object, got {json.dumps(schema)[:80]}")
    if depth > MAX_DEPTH:
        raise ValueError(f"{field} nests deeper than {MAX_DEPTH} levels; flatten the schema")
    for key, value in schema.items():
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise ValueError(f"{field}.{key} is not supported in structured outputs (it would not be enforced); "
                             f"supported keywords: {sorted(ENFORCED)}")
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema_keywords(sub, f"{field}.{key}.{name}", depth + 1)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_schema_keywords(sub, f"{field}.{key}[{i}]", depth + 1)
        elif key in _SUBSCHEMAS and isinstance(value, (dict, bool)):
            check_schema_keywords(value, f"{field}.{key}", depth + 1)


def check(grammar: Grammar) -> None:
    """What can be refused before compiling: unsupported schema keywords, a regex Python cannot parse."""
    if grammar.kind == "json_schema":
        check_schema_keywords(json.loads(grammar.spec), grammar.field)
    elif grammar.kind == "regex":
        try:
            re.compile(grammar.spec)
        except re.error as err:
            raise ValueError(f"{grammar.field} is not a valid regular expression: {err}") from None


class GrammarCompiler:
    """One vocabulary's xgrammar compiler with its cache (xgrammar's own, keyed by the grammar's text)."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr  # noqa: PLC0415 - only where constrained requests run

        self.xgr, self.vocab_size = xgr, vocab_size
        # special and reserved ids decode to nothing here: no grammar's text can be made of them
        vocab = [b"" if tokenizer.is_special(i) else tokenizer.decode_bytes([i]) for i in range(vocab_size)]
        self.stop_token_ids = [t for t in tokenizer.stop_token_ids if t < vocab_size]  # harmony's ends (of a real
        #                                          vocabulary): cleared from every row, each body sets its own ends
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=vocab_size,
                                 stop_token_ids=self.stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=True,
                                            cache_limit_bytes=512 << 20)

    def compile(self, grammar: Grammar):
        """The xgrammar CompiledGrammar (cached); ValueError naming the field if it cannot be compiled."""
        check(grammar)
        try:
            if grammar.kind == "json_schema":
                return self.compiler.compile_json_schema(grammar.spec, any_whitespace=False, strict_mode=True)
            if grammar.kind == "json_object":
                return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                         strict_mode=False)
            return self.compiler.compile_regex(grammar.spec)
        except (RuntimeError, ValueError) as err:  # xgrammar's errors for schemas and patterns it cannot take
            raise ValueError(f"{grammar.field} cannot be compiled to a grammar: {_first_line(err)}") from None

    def matcher(self, grammar: Grammar):
        """A fresh matcher for one request (the compiled grammar comes from the cache)."""
        return self.xgr.GrammarMatcher(self.compile(grammar))

    @functools.cached_property
    def batch_matcher(self):
        """xgrammar's batched bitmask filler (its own threads, up to 4)."""
        return self.xgr.BatchGrammarMatcher(4)


def compiler_for(tokenizer, vocab_size: int) -> GrammarCompiler:
    """The process's compiler for this vocabulary (made on first use: the vocabulary's token table, ~1 s)."""
    with _LOCK:
        if vocab_size not in _COMPILERS:
            _COMPILERS[vocab_size] = GrammarCompiler(tokenizer, vocab_size)
        return _COMPILERS[vocab_size]


def compile_all(compiler: GrammarCompiler, grammars: list[Grammar]) -> None:
    for g in grammars:
        compiler.compile(g)


def prepare(tokenizer, vocab_size: int):
    """A future for the vocabulary's compiler (made once per process, ~1-4 s, not counted against a request's
    compile timeout)."""
    return _POOL.submit(compiler_for, tokenizer, vocab_size)


def submit(compiler: GrammarCompiler, grammars: list[Grammar]):
    """A future for compiling `grammars` on the grammar pool (off the caller's and the engine's threads)."""
    return _POOL.submit(compile_all, compiler, grammars)


def compile_within(tokenizer, vocab_size: int, grammars: list[Grammar], timeout_s: float) -> None:
    """Compile (or find cached) every grammar, or raise a ValueError naming the field that took too long."""
    if not grammars:
        return
    future = submit(prepare(tokenizer, vocab_size).result(), grammars)
    try:
        future.result(timeout=timeout_s)
    except FutureTimeout:
        raise timeout_error(grammars, timeout_s) from None


def timeout_error(grammars: list[Grammar], timeout_s: float) -> ValueError:
    return ValueError(f"{grammars[0].field} took longer than {timeout_s:g} s to compile to a grammar; simplify it "
                      "(fewer alternatives, smaller bounds)")


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
