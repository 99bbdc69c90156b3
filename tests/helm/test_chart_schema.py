"""values.schema.json's cluster-config parts are generated from cluster/config.py and cannot drift from it.

Oracle: `cluster.config.chart_schemas()` (the pydantic models `gptoss serve` validates with); regenerate the file
with `make chart-schema`.
"""

import json
from pathlib import Path

import jsonschema
import yaml

from cluster.config import chart_schemas, load_config, serve_config

CHART = Path(__file__).resolve().parents[2] / "helm" / "gptoss-serve"


def test_the_schema_file_holds_the_generated_config_schema():
    values = json.loads((CHART / "values.schema.json").read_text())
    parts, defs = chart_schemas()
    assert values["properties"]["config"] == parts["config"], "run `make chart-schema`"
    assert values["definitions"]["model"]["properties"]["serve"] == parts["serve"], "run `make chart-schema`"
    assert values["properties"]["grpc"]["properties"]["settings"] == parts["grpc.settings"]
    assert {k: v for k, v in values["definitions"].items() if k.startswith("config.")} == defs


def test_what_the_schema_accepts_the_config_loads_and_the_reverse():
    """The default values validate; a config the cluster loads validates as the chart's `config`."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    config = load_config({"models": [{"name": "m", "path": "/m"}], "limits": {"request_timeout_s": 30},
                          "ingress_replicas": 2})
    chart_config = {k: v for k, v in serve_config(config)["applications"][0]["args"]["config"].items()
                    if k not in ("http", "auth", "grpc", "models")}
    jsonschema.Draft7Validator(schema).validate({"config": chart_config})
