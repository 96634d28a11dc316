"""The local HTTP API (FastAPI): the command line's operations as JSON, with the OpenAPI document
at /openapi.json, and the Alertmanager webhook receiver.

Every request needs `Authorization: Bearer <token>` (engine/api/tokens.py); the token's name is the
operator recorded for whatever the request changes (`api:<name>`, or `alertmanager:<name>` for the
webhook). Request bodies are validated by pydantic before any handler runs; the engine's own
checks then give field-level errors. Status codes: 401 no or wrong token, 404 unknown job, 409 a
refused operation (the job's state does not allow it), 422 invalid input (including a jump with no
reason). Nothing is changed by a refused request.

(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
definition time, and `Operator` is local to `create_app`.)
"""

import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .. import alerts, policy
from ..jobs import JobState
from ..operations import OperationError
from ..spec import SpecError
from ..store import StaleState, UnknownJob
from .tokens import TokenFileDamaged, TokenStore

log = logging.getLogger(__name__)

PriorityName = Literal["urgent", "high", "normal", "low"]
JobId = Annotated[int, Path(ge=1, le=2**53, description="job id")]
Text = Annotated[str, Field(max_length=4000)]
Reason = Annotated[str, Field(max_length=4000, description="why; recorded in the audit trail")]


class Problem(BaseModel):
    field: str | None
    message: str


class ErrorOut(BaseModel):
    ok: Literal[False] = False
    errors: list[Problem]


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=120)]
    data: Text
    model: Text = "yolov8n.yaml"
    train_args: dict[str, Any] = Field(default_factory=dict)
    priority: PriorityName = "normal"
    owner: Annotated[str, Field(max_length=120)] | None = None
    device: Annotated[str, Field(max_length=64, description="any, gpu, cpu, or a cluster pool (slurm)")] = "any"
    reason: Reason | None = Field(default=None, description="required for urgent: it jumps the queue")


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: Annotated[int, Field(ge=1, le=2**53)] | None = None
    after: Annotated[int, Field(ge=1, le=2**53)] | None = None
    reason: Reason | None = None


class JumpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=4000)]


class PriorityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: PriorityName
    reason: Reason | None = None


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = None


class EmergencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=4000)]
    from_job: Annotated[int, Field(ge=1, le=2**53)] | None = None
    model: Text | None = None
    data: Text | None = None
    name: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    train_args: dict[str, Any] = Field(default_factory=dict)


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: Annotated[str, Field(min_length=1, max_length=200)]


class AlertmanagerIn(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="allow")
    version: str = "4"
    status: Literal["firing", "resolved"]
    receiver: str | None = None
    groupKey: str | None = None
    alerts: Annotated[list[AlertIn], Field(max_length=1000)]


MAX_BODY_BYTES = 1 << 20


class GuardMiddleware:
    """Before any body is read: a request to /api/ without a valid token gets 401, and a body over
    1 MiB gets 413. (FastAPI's own dependencies run only after the body was read and parsed.)"""

    def __init__(self, app, tokens: TokenStore) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        try:
            name = self.tokens.authenticate(secret)
        except TokenFileDamaged as e:  # fail closed, and say why
            log.error("API refused a request: %s", e)
            return await _reply(send, 503, str(e))
        if name is None:
            return await _reply(send, 401, "a valid bearer token is required", {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await _reply(send, 413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        if length is not None:
            return await self.app(scope, receive, send)
        # No declared length (chunked): read it here, at most the limit, and hand the app the whole of it.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return await _reply(send, 413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _reply(send, status: int, message: str, extra_headers: dict | None = None) -> None:
    import json

    body = json.dumps({"ok": False, "errors": [{"field": None, "message": message}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(engine_like, tokens: TokenStore) -> FastAPI:
    """`engine_like` needs .ops (Operations), .store, .home, .devices_report() and .wake()."""
    ops, store = engine_like.ops, engine_like.store
    receiver = alerts.AlertReceiver(ops, engine_like.home)
    bearer = HTTPBearer(auto_error=False, description="the token Cutline generated (console settings, "
                                                       "or `python main.py token show`)")
    # No /docs or /redoc: both load their pages from a CDN, and factory workstations are often offline.
    app = FastAPI(title="Cutline", version="1", description=__doc__.split("\n\n")[0], docs_url=None, redoc_url=None,
                  responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}})
    app.add_middleware(GuardMiddleware, tokens=tokens)

    def operator(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        try:
            name = tokens.authenticate(credentials.credentials if credentials else None)
        except TokenFileDamaged as e:
            raise HTTPException(503, str(e)) from None
        if name is None:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        return f"api:{name}"

    Operator = Annotated[str, Depends(operator)]

    def error(status: int, problems: list[tuple[str | None, str]]) -> JSONResponse:
        return JSONResponse({"ok": False, "errors": [{"field": f, "message": m} for f, m in problems]}, status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        response = error(exc.status_code, [(None, str(exc.detail))])
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(SpecError)
    async def spec_error(request: Request, exc: SpecError):
        return error(422, [(p.field, p.message) for p in exc.problems])

    @app.exception_handler(OperationError)
    async def operation_error(request: Request, exc: OperationError):
        return error(422 if exc.field in ("reason", "position", "priority") else 409, [(exc.field, str(exc))])

    @app.exception_handler(UnknownJob)
    async def unknown(request: Request, exc: UnknownJob):
        return error(404, [(None, str(exc))])

    @app.exception_handler(StaleState)
    async def stale(request: Request, exc: StaleState):
        return error(409, [(None, str(exc))])

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, [(".".join(str(x) for x in e.get("loc", ())[1:]) or None, e.get("msg", "invalid"))
                           for e in exc.errors()])

    def changed(result):
        engine_like.wake()
        return result

    def moved(result) -> dict:
        return changed({"job": result.job.to_dict(), "kind": result.kind, "passed": list(result.passed)})

    # ------------------------------------------------------------------ reading

    @app.get("/api/v1/jobs", summary="Jobs in queue order (not ended), optionally the ended ones too")
    def list_jobs(_: Operator, include_ended: bool = False,
                  state: Annotated[list[JobState] | None, Query()] = None) -> dict:
        jobs = ops.queue()
        if include_ended:
            jobs += [j for j in store.jobs() if j.state.is_terminal]
        if state:
            jobs = [j for j in jobs if j.state in state]
        waiting = {int(k): v for k, v in policy.decide(ops.snapshot()).waiting}
        return {"jobs": [{**j.to_dict(), "waiting_reason": waiting.get(j.id)} for j in jobs]}

    @app.get("/api/v1/jobs/{job_id}", summary="One job, with its transitions")
    def show_job(job_id: JobId, _: Operator) -> dict:
        job = store.job(job_id)
        return {"job": job.to_dict(), "transitions": store.transitions(job_id)}

    @app.get("/api/v1/devices", summary="Devices and what runs on them")
    def devices(_: Operator) -> dict:
        return {"devices": engine_like.devices_report()}

    @app.get("/api/v1/audit", summary="Audit entries, newest last")
    def audit(_: Operator, job: Annotated[int | None, Query(ge=1, le=2**53)] = None,
              limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> dict:
        entries = ops.audit.entries(job_id=job, limit=limit)
        return {"entries": [{"seq": e.seq, "ts": e.ts, "kind": e.kind, "operator": e.operator, "reason": e.reason,
                             "job_id": e.job_id, "details": e.details, "hash": e.hash} for e in entries]}

    @app.get("/api/v1/audit/verify", summary="Check the audit chain for edits and deletions")
    def audit_verify(_: Operator) -> dict:
        result = ops.audit.verify()
        return {"ok": result.ok, "checked": result.checked, "problems": list(result.problems)}

    @app.get("/api/v1/alerts", summary="Alerts received and what each caused")
    def list_alerts(_: Operator, limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> dict:
        return {"alerts": alerts.alert_events(store, limit)}

    # ------------------------------------------------------------------ changing

    @app.post("/api/v1/jobs", status_code=201, summary="Submit a job (urgent needs a reason)")
    def submit(body: SubmitIn, who: Operator) -> dict:
        job = ops.submit(name=body.name, model=body.model, data=body.data, train_args=body.train_args,
                         priority=body.priority, owner=body.owner or who, device_kind=body.device,
                         operator=who, reason=body.reason)
        return changed({"job": job.to_dict()})

    @app.post("/api/v1/jobs/{job_id}/move", summary="Put a job before or after another (moving up is a jump)")
    def move(job_id: JobId, body: MoveIn, who: Operator) -> dict:
        result = ops.move(job_id, before=body.before, after=body.after, operator=who, reason=body.reason)
        return moved(result)

    @app.post("/api/v1/jobs/{job_id}/jump", summary="Make a job urgent and first in line")
    def jump(job_id: JobId, body: JumpIn, who: Operator) -> dict:
        result = ops.jump(job_id, reason=body.reason, operator=who)
        return moved(result)

    @app.post("/api/v1/jobs/{job_id}/priority", summary="Change a job's class (raising is a jump)")
    def set_priority(job_id: JobId, body: PriorityIn, who: Operator) -> dict:
        result = ops.set_priority(job_id, body.priority, reason=body.reason, operator=who)
        return moved(result)

    @app.post("/api/v1/jobs/{job_id}/pause", summary="Hold a job (a running one checkpoints first)")
    def pause(job_id: JobId, body: NoteIn, who: Operator) -> dict:
        return changed({"job": ops.pause(job_id, operator=who, reason=body.reason).to_dict()})

    @app.post("/api/v1/jobs/{job_id}/resume", summary="Return a paused job to its place")
    def resume(job_id: JobId, who: Operator) -> dict:
        return changed({"job": ops.resume(job_id, operator=who).to_dict()})

    @app.post("/api/v1/jobs/{job_id}/cancel", summary="Cancel a job (a running one checkpoints first)")
    def cancel(job_id: JobId, body: NoteIn, who: Operator) -> dict:
        return changed({"job": ops.cancel(job_id, operator=who, reason=body.reason).to_dict()})

    @app.post("/api/v1/jobs/{job_id}/retry", summary="Requeue a failed job from its last checkpoint")
    def retry(job_id: JobId, who: Operator) -> dict:
        return changed({"job": ops.retry(job_id, operator=who).to_dict()})

    @app.post("/api/v1/emergency", status_code=201, summary="Emergency retrain from a job's weights or a model file")
    def emergency(body: EmergencyIn, who: Operator) -> dict:
        job = ops.emergency(reason=body.reason, operator=who, from_job=body.from_job, model=body.model,
                            data=body.data, name=body.name, train_args=body.train_args)
        return changed({"job": job.to_dict()})

    @app.post("/api/v1/alertmanager", summary="Alertmanager webhook receiver (payload version 4)")
    def alertmanager(body: AlertmanagerIn, who: Operator) -> dict:
        outcomes = receiver.receive(body.model_dump(), operator=who.replace("api:", "alertmanager:", 1))
        engine_like.wake()
        return {"received": len(outcomes), "outcomes": [o.to_dict() for o in outcomes]}

    return app
