"""Property tests of the live API against its own /openapi.json (schemathesis): generated requests, valid and
invalid, to every operation; the run fails on any 5xx and on any response whose status, content type, headers or
body the published schema does not allow. (A schema-valid request may still get a 400 where a check needs the
model, e.g. a prompt beyond the context, so "positive data accepted" is left out.)

The operations are driven with hypothesis directly (schemathesis's own pytest plugin does not run under pytest 9).
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402

from tests.cluster.conftest import model_entry  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 60  # per operation and generation mode


@pytest.fixture(scope="module")
def base(serve_app, tiny_model):
    entry = model_entry("tiny", tiny_model, default_max_tokens=4,
                        engine={"kv_cache_memory": 16 << 20, "max_model_len": 96, "max_num_seqs": 16})
    return serve_app({"models": [entry]}, "schemathesis")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_api_keeps_its_published_contract(base, mode):
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    tested = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(base_url=base, excluded_checks=[checks.positive_data_acceptance], timeout=120)

        try:
            check()
            tested += 1
        except Unsatisfiable:  # nothing in the operation can be made invalid (GET /v1/models takes no input)
            assert mode is GenerationMode.NEGATIVE
    assert tested >= (5 if mode is GenerationMode.POSITIVE else 3)  # the three POST operations at least
