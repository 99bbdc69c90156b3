"""Constrained decoding: a request's output held to a grammar (JSON schema, JSON object, regex) inside the harmony
turn, with a reasoning budget. params.py: what a request asks (plain data); grammar.py: compiling with xgrammar;
harmony.py: the per-request state on the sampling rank and its token bitmask."""
