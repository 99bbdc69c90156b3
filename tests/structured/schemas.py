"""Twenty JSON schemas whose languages are finite (bounded strings, arrays and numbers), so a random model held to
them always finishes: nested objects, arrays, enums, required fields, numbers with bounds, strings with patterns.
Shared by the engine's and the cluster's structured-output tests."""

WORD = {"type": "string", "pattern": "^[a-z]{1,8}$"}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 99}

SCHEMAS = [
    {"type": "object", "properties": {"name": WORD, "age": SMALL_INT}, "required": ["name", "age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": WORD, "minItems": 1, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": SMALL_INT, "y": SMALL_INT},
                                                "required": ["x", "y"]}}, "required": ["point"]},
    {"type": "object", "properties": {"temp": {"type": "integer", "minimum": -40, "maximum": 50},
                                      "unit": {"enum": ["c", "f"]}}, "required": ["temp", "unit"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": WORD, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"]}}}, "required": ["items"]},
    {"type": "object", "properties": {"answer": {"const": "yes"}}, "required": ["answer"]},
    {"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2, 3]}, "note": WORD},
     "required": ["level"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"type": "boolean"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
                                      "active": {"type": "boolean"}}, "required": ["id", "active"]},
    {"type": "object", "properties": {"scores": {"type": "array", "items": SMALL_INT, "minItems": 2,
                                                 "maxItems": 4}}, "required": ["scores"]},
    {"type": "object", "properties": {"kind": {"anyOf": [{"const": "cat"}, {"const": "dog"}]}, "legs": SMALL_INT},
     "required": ["kind", "legs"]},
    {"type": "object", "properties": {"first": WORD, "last": WORD, "middle": WORD}, "required": ["first", "last"]},
    {"type": "object", "properties": {"value": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}},
     "required": ["value"]},
    {"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [WORD, SMALL_INT],
                                               "minItems": 2, "maxItems": 2}}, "required": ["pair"]},
    {"type": "object", "properties": {"status": {"enum": ["open", "closed"]}, "count": SMALL_INT,
                                      "owner": {"type": "object", "properties": {"name": WORD},
                                                "required": ["name"]}}, "required": ["status", "count", "owner"]},
    {"type": "object", "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
     "required": ["date"]},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2}}},
     "required": ["matrix"]},
]

for _schema in SCHEMAS:  # strict: no other keys (as OpenAI's strict mode)
    _schema.setdefault("additionalProperties", False)
