"""The dashboard's pages and forms. Reads go through the same services as the REST API; every
change is a POST form with the session's CSRF token, allowed only to keys with the write scope
(the server refuses it otherwise, whatever the page showed)."""

import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from kernex_backend.bundles import service as bundles
from kernex_backend.core.access import VerifierDep
from kernex_backend.core.errors import Conflict, NotFound
from kernex_backend.core.input_guard import refuse_nul
from kernex_backend.core.pagination import Page
from kernex_backend.core.runtime import SessionDep, SettingsDep
from kernex_backend.deployments import actions
from kernex_backend.deployments import service as deployments
from kernex_backend.deployments.models import ExecutionState
from kernex_backend.deployments.router import ControllerDep, NoticesDep, ReleaseKeysDep
from kernex_backend.deployments.schemas import DeploymentCreate, RetryRequest
from kernex_backend.devices import service as devices
from kernex_backend.ui import queries
from kernex_backend.ui.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    UI_PATH,
    UiSession,
    UiSessionDep,
    new_login_token,
    same,
)

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
FAILING = (ExecutionState.FAILED, ExecutionState.ROLLED_BACK, ExecutionState.TIMED_OUT)

router = APIRouter(
    prefix=UI_PATH,
    include_in_schema=False,
    default_response_class=HTMLResponse,
    dependencies=[Depends(refuse_nul)],
)


class CsrfRefused(Exception):
    """A form without this session's token: refused (403), nothing changed."""


class WriteRefused(Exception):
    """A change asked for with a read-only key: refused (403), nothing changed."""


def _page(request: Request, name: str, ui: UiSession | None, **context: Any) -> Response:
    return TEMPLATES.TemplateResponse(
        request, name, {"ui": ui, "path": request.url.path, **context}
    )


def _checked(ui: UiSession, csrf: str, *, write: bool = True) -> None:
    if not same(csrf, ui.csrf):
        raise CsrfRefused
    if write and not ui.can_write:
        raise WriteRefused


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login")
async def login_form(request: Request, error: str | None = None) -> Response:
    token = new_login_token()
    response = _page(request, "login.html", None, login_token=token, error=error)
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path=UI_PATH
    )
    return response


@router.post("/login")
async def login(
    request: Request,
    verifier: VerifierDep,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=200)],
    login_token: Annotated[str, Form(max_length=100)],
) -> Response:
    if not same(login_token, request.cookies.get(LOGIN_COOKIE)):
        return RedirectResponse(f"{UI_PATH}/login?error=expired", status_code=303)
    if await verifier.verify(session, api_key.strip()) is None:
        return RedirectResponse(f"{UI_PATH}/login?error=refused", status_code=303)
    response = RedirectResponse(f"{UI_PATH}/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        api_key.strip(),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=UI_PATH,
        max_age=12 * 3600,
    )
    response.delete_cookie(LOGIN_COOKIE, path=UI_PATH)
    return response


@router.post("/logout")
async def logout(ui: UiSessionDep, csrf: Annotated[str, Form(max_length=100)]) -> Response:
    _checked(ui, csrf, write=False)
    response = RedirectResponse(f"{UI_PATH}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=UI_PATH)
    return response


@router.get("/")
async def overview(
    request: Request, ui: UiSessionDep, session: SessionDep, settings: SettingsDep
) -> Response:
    fleet = await queries.overview(session, offline_after_s=settings.mqtt.offline_after_s)
    recent, _ = await deployments.list_deployments(session=session, page=Page(10, 0))
    outcomes = await deployments.outcomes(session=session, deployment_ids=[d.id for d in recent])
    return _page(request, "overview.html", ui, fleet=fleet, deployments=recent, outcomes=outcomes)


@router.get("/devices")
async def device_list(
    request: Request,
    ui: UiSessionDep,
    session: SessionDep,
    q: str = "",
    state: str = "",
    offset: int = 0,
) -> Response:
    tags: dict[str, str] = {}
    if ":" in q:
        key, _, value = q.partition(":")
        tags = {key.strip(): value.strip()}
    filters = devices.DeviceFilters(online={"online": True, "offline": False}.get(state), tags=tags)
    rows, total = await devices.list_devices(
        session=session, filters=filters, page=Page(50, max(0, offset))
    )
    return _page(
        request, "devices.html", ui, devices=rows, total=total, q=q, state=state, offset=offset
    )


@router.get("/devices/{device_id}")
async def device_page(
    request: Request, device_id: str, ui: UiSessionDep, session: SessionDep
) -> Response:
    device = await devices.get(session=session, device_id=device_id)
    return _page(
        request,
        "device.html",
        ui,
        device=device,
        heartbeats=await queries.recent_heartbeats(session, device_id),
        presence=await devices.presence_history(session=session, device_id=device_id, limit=20),
        history=await queries.deployment_history(session, device_id),
    )


@router.get("/bundles")
async def bundle_list(request: Request, ui: UiSessionDep, session: SessionDep) -> Response:
    rows, total = await bundles.list_bundles(session=session, page=Page(100, 0))
    usage = await queries.bundle_usage(session)
    return _page(request, "bundles.html", ui, bundles=rows, total=total, usage=usage)


@router.get("/deployments")
async def deployment_list(request: Request, ui: UiSessionDep, session: SessionDep) -> Response:
    rows, total = await deployments.list_deployments(session=session, page=Page(100, 0))
    outcomes = await deployments.outcomes(session=session, deployment_ids=[d.id for d in rows])
    return _page(request, "deployments.html", ui, deployments=rows, total=total, outcomes=outcomes)


async def _progress(session: SessionDep, deployment_id: uuid.UUID) -> dict[str, Any]:
    detail = await deployments.detail(session=session, deployment_id=deployment_id)
    failing: list[Any] = []
    for state in FAILING:
        rows, _ = await deployments.list_executions(
            session=session, deployment_id=deployment_id, page=Page(50, 0), state=state
        )
        failing += rows
    return {"detail": detail, "failing": failing}


@router.get("/deployments/new")
async def new_deployment(request: Request, ui: UiSessionDep, session: SessionDep) -> Response:
    rows, _ = await bundles.list_bundles(session=session, page=Page(100, 0))
    return _page(request, "new_deployment.html", ui, bundles=rows, preview=None, form={})


def _deployment_request(form: dict[str, str]) -> DeploymentCreate:
    tag_key, _, tag_value = form.get("target", "").partition("=")
    waves: list[int | str] = [
        w.strip() if w.strip().endswith("%") else int(w.strip())
        for w in form.get("waves", "100%").split(",")
        if w.strip()
    ]
    selector: dict[str, Any] = (
        {"tags": {tag_key.strip(): tag_value.strip()}} if tag_key.strip() else {"all": True}
    )
    return DeploymentCreate.model_validate(
        {
            "name": form.get("name") or "dashboard deployment",
            "bundle_id": form.get("bundle_id"),
            "selector": selector,
            "strategy": {"waves": waves},
        }
    )


@router.post("/deployments/new")
async def create_deployment(
    request: Request,
    ui: UiSessionDep,
    session: SessionDep,
    notices: NoticesDep,
    controller: ControllerDep,
    keys: ReleaseKeysDep,
    csrf: Annotated[str, Form(max_length=100)],
    bundle_id: Annotated[str, Form(max_length=64)],
    name: Annotated[str, Form(max_length=128)] = "",
    target: Annotated[str, Form(max_length=200)] = "",
    waves: Annotated[str, Form(max_length=200)] = "100%",
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Preview first; the confirm button of the preview page creates it."""
    _checked(ui, csrf)
    form = {"bundle_id": bundle_id, "name": name, "target": target, "waves": waves}
    rows, _ = await bundles.list_bundles(session=session, page=Page(100, 0))
    try:
        request_body = _deployment_request(form)
    except (ValidationError, ValueError) as exc:
        error = str(exc).splitlines()[0] if str(exc) else "invalid input"
        return _page(
            request, "new_deployment.html", ui, bundles=rows, preview=None, form=form, error=error
        )
    if confirm != "yes":
        plan = await deployments.preview(session=session, request=request_body)
        return _page(request, "new_deployment.html", ui, bundles=rows, preview=plan, form=form)
    created = await actions.create(
        session=session,
        request=request_body,
        actor=ui.principal.actor,
        release_keys=keys.keys,
        notices=notices,
        controller=controller,
    )
    return RedirectResponse(f"{UI_PATH}/deployments/{created.id}", status_code=303)


@router.get("/deployments/{deployment_id}")
async def deployment_page(
    request: Request, deployment_id: uuid.UUID, ui: UiSessionDep, session: SessionDep
) -> Response:
    return _page(request, "deployment.html", ui, **await _progress(session, deployment_id))


@router.get("/deployments/{deployment_id}/live")
async def deployment_live(
    request: Request, deployment_id: uuid.UUID, ui: UiSessionDep, session: SessionDep
) -> Response:
    """The progress part of the deployment page, fetched by ui.js every two seconds."""
    return _page(request, "deployment_live.html", ui, **await _progress(session, deployment_id))


@router.post("/deployments/{deployment_id}/{action}")
async def control(
    deployment_id: uuid.UUID,
    action: str,
    ui: UiSessionDep,
    session: SessionDep,
    notices: NoticesDep,
    controller: ControllerDep,
    csrf: Annotated[str, Form(max_length=100)],
) -> Response:
    _checked(ui, csrf)
    actor = ui.principal.actor
    page = f"{UI_PATH}/deployments/{deployment_id}"
    try:
        if action == "pause":
            await deployments.pause(session=session, deployment_id=deployment_id, actor=actor)
        elif action == "resume":
            await actions.resume(
                session=session, deployment_id=deployment_id, actor=actor, controller=controller
            )
        elif action == "cancel":
            await actions.cancel(
                session=session, deployment_id=deployment_id, actor=actor, notices=notices
            )
        elif action == "approve":
            await actions.approve(
                session=session,
                deployment_id=deployment_id,
                actor=actor,
                override_threshold=False,
                controller=controller,
            )
        elif action == "retry":
            await actions.retry(
                session=session,
                deployment_id=deployment_id,
                actor=actor,
                states=RetryRequest().states,
                controller=controller,
            )
        else:
            raise NotFound(f"no action {action!r}")
    except Conflict as exc:
        return RedirectResponse(f"{page}?notice={quote(str(exc))}", status_code=303)
    return RedirectResponse(page, status_code=303)
