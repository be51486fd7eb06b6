"""Schemathesis over the controller's own OpenAPI document: every operation, as an admin, a
user and a pilot (its own pilot id in the paths), with valid and with invalid requests, a
bounded number of examples each; no answer is a 5xx, every status is declared, every body
matches the declared schema (the 422s too)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controller.auth import Role
from controller.store import Store
from tests.conftest import MANUAL, Controller, new_controller

pytestmark = pytest.mark.integration
EXAMPLES = 4  # per operation, role and mode: bounded, so the run stays under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@dataclass
class Credentials:
    """A valid credential per role, made again when a generated request revoked it (a
    DELETE of a token, a pilot's goodbye)."""

    ctrl: Controller
    tokens: dict[str, str] = field(default_factory=dict)
    pilot_id: str = ""
    pilots: list[str] = field(default_factory=list)

    def get(self, role: str) -> str:
        if role not in self.tokens:
            store = Store(self.ctrl.database)
            try:
                if role == "admin":
                    self.tokens[role] = store.tokens.issue(Role.ADMIN, note="schemathesis")
                elif role == "user":
                    self.tokens[role] = store.tokens.issue(Role.USER, owner="alice")
                else:
                    boot = store.tokens.issue(Role.PILOT, endpoint="manual")
            finally:
                store.close()
            if role == "pilot":
                body = {"machine": f"fuzz-{len(self.pilots)}", "cores": 8, "memory_mb": 8192,
                        "slots": 4}
                r = httpx.post(self.ctrl.url + "/api/v1/pilots/register", json=body,
                               headers={"Authorization": f"Bearer {boot}"})
                assert r.status_code == 201, r.text
                self.tokens[role], self.pilot_id = r.json()["token"], r.json()["pilot_id"]
                self.pilots.append(self.pilot_id)
        return self.tokens[role]

    def check(self, role: str, status: int) -> None:
        if status == 401:  # revoked by the request just made: a new one for the next
            self.tokens.pop(role, None)


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory) -> Iterator[Controller]:
    c = new_controller(tmp_path_factory.mktemp("fuzz"), [MANUAL, {**MANUAL, "name": "other"}],
                       long_poll_max=0.2, lease=600, max_bulk_jobs=50)
    c.start()
    yield c
    c.stop()


def fuzz(op: schemathesis.APIOperation, mode: GenerationMode, role: str, creds: Credentials,
         cases: Counter[str], failures: list[str]) -> None:
    """Run one operation's generated cases as one role; count them, keep what fails."""

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         derandomize=True, phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        token = creds.get(role)
        if role == "pilot" and "pilot_id" in (case.path_parameters or {}):
            case.path_parameters["pilot_id"] = creds.pilot_id
        cases[role] += 1
        if case.query and case.query.get("follow") not in (None, False, "false"):
            case.query["follow"] = False  # an endless stream, as /api/v1/events
        try:
            r = case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                                       checks=CHECKS, timeout=30)
            creds.check(role, r.status_code)
        except Exception as e:  # counted and reported together, after the run
            failures.append(f"{role} {mode.value} {op.label}: {type(e).__name__}: "
                            f"{str(e)[:800]}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # nothing to get wrong (no parameters)


@pytest.mark.timeout(300)  # about 40 s here; more on a machine shared by busy neighbours
def test_schemathesis_finds_no_5xx_and_no_schema_violation(ctrl):
    schema = schemathesis.openapi.from_url(ctrl.url + "/openapi.json")
    # every operation but the event stream, which never ends (the matrix and test_events
    # cover it)
    operations = [op for op in (r.ok() for r in schema.get_all_operations())
                  if op.path != "/api/v1/events"]
    creds = Credentials(ctrl)
    cases: Counter[str] = Counter()
    failures: list[str] = []
    for role in ("admin", "user", "pilot"):
        for op in operations:
            for mode in GenerationMode:
                fuzz(op, mode, role, creds, cases, failures)
    print(f"schemathesis: {len(operations)} operations, {sum(cases.values())} cases "
          f"({dict(cases)}), {len(failures)} failures")
    assert len(operations) == 53  # issue 22: files, sandboxes, live output, pilot code;
    # issue 25: usage, whatif
    assert all(n >= len(operations) * 2 for n in cases.values())
    assert failures == [], "\n\n".join(failures[:10])
