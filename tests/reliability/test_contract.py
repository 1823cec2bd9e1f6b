"""API contract fuzzing with schemathesis against the live server's ``/openapi.json``.

Every operation of the published schema gets generated requests (valid and invalid path parameters, query
strings and bodies); each answer must not be a server error and must conform to the schema (declared status
code, content type, response body schema). Seeded (``derandomize``) and bounded in examples per operation.
Budget: about 20 s.
"""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .harness import FaultServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 12


def _operation_failures(operation: schemathesis.schemas.APIOperation, base_url: str,
                        statuses: list[int]) -> str | None:
    """Run the bounded, seeded examples of one operation (their status codes appended to ``statuses``); the
    first failure's text, or ``None``."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - schemathesis raises check-failure groups; report them all
        return f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}"
    return None


def test_openapi_contract(server: FaultServer) -> None:
    """Every operation in the live schema; the schemathesis pytest plugin is not used (its fixture loader
    fails with this pytest version), hypothesis drives each operation's strategy directly."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", wait_for_schema=10.0)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predictions", "/v1/predictions/{prediction_id}", "/v1/model",
                                               "/health/ready"}
    statuses: list[int] = []
    failures = [f for op in operations if (f := _operation_failures(op, server.base_url, statuses)) is not None]
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 2 * len(operations) and {200, 404} <= set(statuses), sorted(set(statuses))
    assert server.ready_status() == 200
