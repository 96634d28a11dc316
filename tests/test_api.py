"""The HTTP API over a real uvicorn server and a real store: authentication, refusals that change
nothing, jumps with the token's name as operator, and a schemathesis fuzz run from the API's own
OpenAPI document that must find no server error and leave the queue and audit trail intact.
(The engine loop is not running here, so submitted jobs stay queued: no training.)"""
from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from engine.api.server import ApiRefused, ApiServer
from engine.api.tokens import TokenStore
from engine.core import Engine

from engine_runs import TEST_SETTINGS, tiny_job, zip_weights


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dataset):
    engine = Engine(tmp_path_factory.mktemp("api") / "home", use_nvml=False, settings={**TEST_SETTINGS})
    for name, priority in (("alpha", "normal"), ("beta", "normal"), ("gamma", "low")):
        engine.ops.submit(**tiny_job(tiny_dataset, name, priority))
    server = ApiServer(engine, "127.0.0.1", 0).start()
    token = TokenStore(engine.home).ensure_default().secret
    yield engine, server, token
    server.stop()
    engine.shutdown()


@pytest.fixture
def engine_api(tmp_path):
    """An empty engine of its own, for tests that damage the tokens file."""
    engine = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS})
    server = ApiServer(engine, "127.0.0.1", 0).start()
    yield engine, server, TokenStore(engine.home).ensure_default().secret
    server.stop()
    engine.shutdown()


def test_the_token_file_is_owner_only_and_tokens_are_checked(served):
    engine, server, token = served
    mode = stat.S_IMODE(os.stat(TokenStore(engine.home).path).st_mode)
    assert mode == 0o600
    assert call(f"{server.url}/api/v1/jobs")[0] == 401
    status, body = call(f"{server.url}/api/v1/jobs", token="not-the-token")
    assert status == 401 and body["ok"] is False
    status, body = call(f"{server.url}/api/v1/jobs", token=token)
    assert status == 200 and [j["name"] for j in body["jobs"]] == ["alpha", "beta", "gamma"]
    assert body["jobs"][0]["waiting_reason"] is None or isinstance(body["jobs"][0]["waiting_reason"], str)


def test_refused_requests_change_nothing(served, tiny_dataset):
    engine, server, token = served
    before = ([j.to_dict() for j in engine.store.jobs()], len(engine.audit.entries()))
    gamma = next(j for j in engine.store.jobs() if j.name == "gamma")
    # Without a token, with a wrong one, and a jump with a missing or blank reason.
    assert call(f"{server.url}/api/v1/jobs/{gamma.id}/jump", "POST", {"reason": "x"})[0] == 401
    assert call(f"{server.url}/api/v1/jobs/{gamma.id}/jump", "POST", {"reason": "x"}, token="wrong")[0] == 401
    status, body = call(f"{server.url}/api/v1/jobs/{gamma.id}/jump", "POST", {}, token=token)
    assert status == 422 and body["errors"][0]["field"] == "reason"
    status, body = call(f"{server.url}/api/v1/jobs/{gamma.id}/jump", "POST", {"reason": "   "}, token=token)
    assert status == 422 and body["errors"][0]["field"] == "reason"
    status, body = call(f"{server.url}/api/v1/jobs/{gamma.id}/move", "POST", {"before": gamma.id - 2}, token=token)
    assert status == 422 and "reason" in body["errors"][0]["message"]
    # A bad submission names its fields; an unknown job is 404.
    status, body = call(f"{server.url}/api/v1/jobs", "POST",
                        {"name": "bad", "data": "/missing.yaml", "model": "yolov8n.pt", "train_args": {"epocs": 1}},
                        token=token)
    assert status == 422 and {e["field"] for e in body["errors"]} >= {"data", "model", "epocs"}
    assert call(f"{server.url}/api/v1/jobs/999/pause", "POST", {}, token=token)[0] == 404
    assert ([j.to_dict() for j in engine.store.jobs()], len(engine.audit.entries())) == before


def test_a_jump_through_the_api_records_the_token_name_as_operator(served):
    engine, server, token = served
    gamma = next(j for j in engine.store.jobs() if j.name == "gamma")
    status, body = call(f"{server.url}/api/v1/jobs/{gamma.id}/move", "POST",
                        {"before": engine.ops.queue()[0].id, "reason": "line 2 audit"}, token=token)
    assert status == 200 and body["kind"] == "jump"
    entry = engine.audit.entries()[-1]
    assert (entry.kind, entry.operator, entry.reason) == ("jump", "api:default", "line 2 audit")
    status, body = call(f"{server.url}/api/v1/audit/verify", token=token)
    assert status == 200 and body["ok"] is True


def test_a_non_loopback_address_without_a_token_is_refused(tmp_path):
    engine = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS})
    try:
        tokens = TokenStore(engine.home)
        tokens.ensure_default()
        assert tokens.revoke("default") and tokens.tokens() == []
        with pytest.raises(ApiRefused, match="not loopback"):
            ApiServer(engine, "0.0.0.0", 0)
        server = ApiServer(engine, "127.0.0.1", 0).start()  # loopback: serves, but nothing authenticates
        try:
            assert call(f"{server.url}/api/v1/jobs", token="anything")[0] == 401
        finally:
            server.stop()
    finally:
        engine.shutdown()


def test_fuzzing_the_api_from_its_openapi_document_finds_no_server_error(served, tiny_dataset, tmp_path_factory):
    """Every operation of /openapi.json, with schemathesis-generated requests (valid and not),
    authenticated. Submissions and emergencies are fuzzed twice: as generated (their paths almost
    never exist, so they stop at the checks), and with a real dataset and weights, so the arguments
    reach a queued job and the responses that show it. (schemathesis' own pytest plugin does not
    load under pytest 9 yet, so its strategies are driven with hypothesis directly.)"""
    engine, server, token = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every command is in the document
    weights = zip_weights(tmp_path_factory.mktemp("fuzz") / "best.pt")
    real_paths = {"data": str(tiny_dataset), "model": str(weights)}
    queued_before = len(engine.store.jobs())

    def fuzz_operation(operation, fill_paths: bool) -> None:
        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            if fill_paths and isinstance(case.body, dict):
                case.body.update({k: v for k, v in real_paths.items() if k in case.body or k == "data"})
            response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        fuzz()

    for operation in operations:
        fuzz_operation(operation, fill_paths=False)
    for operation in operations:
        if operation.method.upper() == "POST" and operation.path.rstrip("/").endswith(("/jobs", "/emergency")):
            fuzz_operation(operation, fill_paths=True)
    assert failures == []
    assert len(engine.store.jobs()) > queued_before, "with real paths, some fuzzed submissions were queued"
    status, body = call(f"{server.url}/api/v1/jobs", token=token)
    assert status == 200 and len(body["jobs"]) == len([j for j in engine.store.jobs() if not j.state.is_terminal])


def test_after_the_fuzz_the_queue_and_audit_trail_are_intact(served):
    engine, server, token = served
    assert engine.audit.verify().ok
    with engine.store.lock:
        assert engine.store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for job in engine.store.jobs():
        assert job.name.strip() and job.run_dir and job.state.value  # every row is a whole job
    assert call(f"{server.url}/api/v1/jobs", token=token)[0] == 200


def raw_request(url: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Send headers (and a body, if any) and return the status: a refusal may come before the body
    was read, so the declared Content-Length can exceed what is sent."""
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.putrequest("POST", parsed.path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def test_unauthenticated_and_oversized_bodies_are_refused_before_they_are_read(served):
    engine, server, token = served
    url = f"{server.url}/api/v1/jobs"
    # No token: 401 even for a body that is not JSON at all (it is never parsed).
    assert raw_request(url, {"Content-Type": "application/json", "Content-Length": "9"}, b"not json!") == 401
    # Declared over 1 MiB: 413 before a byte of it is read.
    assert raw_request(url, {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                             "Content-Length": str(2 << 20)}) == 413
    status, _ = call(url, "POST", {"name": "p", "data": "/missing.yaml", "device": "slurm"}, token=token)
    assert status == 422  # a pool name is a valid field value; the engine says there is no such pool


def test_a_damaged_tokens_file_fails_closed_and_regenerating_repairs_it(engine_api):
    engine, server, token = engine_api
    store = TokenStore(engine.home)
    store.path.write_text("{")  # torn by hand or by a crash
    status, body = call(f"{server.url}/api/v1/jobs", token=token)
    assert status == 503 and "damaged" in body["errors"][0]["message"], "refused, with the reason"
    store.path.write_text('{"tokens": [{"name": "default"}]}')  # the wrong shape
    assert call(f"{server.url}/api/v1/jobs", token=token)[0] == 503
    fresh = store.regenerate("default")
    assert store.path.with_name(store.path.name + ".damaged").read_text() == '{"tokens": [{"name": "default"}]}'
    assert call(f"{server.url}/api/v1/jobs", token=fresh.secret)[0] == 200
    assert call(f"{server.url}/api/v1/jobs", token=token)[0] == 401
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_a_short_hand_edited_secret_never_authenticates(engine_api):
    engine, server, _ = engine_api
    store = TokenStore(engine.home)
    store.path.write_text('{"tokens": [{"name": "weak", "secret": "x", "created_at": 0}]}')
    assert call(f"{server.url}/api/v1/jobs", token="x")[0] == 401


def test_a_chunked_body_over_the_limit_is_refused_with_413(engine_api):
    import http.client

    engine, server, token = engine_api
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 65536 for _ in range(20))  # 1.25 MiB, no Content-Length
    conn.request("POST", "/api/v1/jobs", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 413 and b"limited to" in response.read()
    assert engine.store.jobs() == []
