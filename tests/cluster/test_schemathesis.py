"""Property tests of the live API against its own /openapi.json (schemathesis): generated requests, valid and
invalid, to every operation; the run fails on any 5xx and on any response whose status, content type, headers or
body the published schema does not allow. (A schema-valid request may still get a 400 where a check needs the
model, e.g. a prompt beyond the context, so "positive data accepted" is left out.)
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from tests.cluster.conftest import model_entry  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    entry = model_entry("tiny", tiny_model, default_max_tokens=4,
                        engine={"kv_cache_memory": 16 << 20, "max_model_len": 96, "max_num_seqs": 16})
    return serve_app({"models": [entry]}, "schemathesis")


@pytest.fixture(scope="module")
def api_schema(base):
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_published_contract(case, base):
    case.call_and_validate(base_url=base, excluded_checks=[checks.positive_data_acceptance], timeout=120)
