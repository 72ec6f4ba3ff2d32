"""Mounting the dashboard on the application: its pages, static files, and the handlers that
turn a missing sign-in into a redirect and a refused form or a missing object into a page."""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from kernex_backend.core.errors import KernexError, handle_kernex_error
from kernex_backend.ui.router import TEMPLATES, CsrfRefused, WriteRefused, router
from kernex_backend.ui.session import UI_PATH, SignInRequired


def _error_page(request: Request, status: int, title: str, detail: str) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"ui": None, "path": request.url.path, "title": title, "detail": detail},
        status_code=status,
    )


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at /ui."""
    app.include_router(router)
    app.mount(
        f"{UI_PATH}/static",
        StaticFiles(directory=Path(__file__).parent / "static"),
        name="ui-static",
    )

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.method == "GET":
            return RedirectResponse(f"{UI_PATH}/login", status_code=303)
        return _error_page(request, 401, "Signed out", "Sign in again to do that.")

    @app.exception_handler(CsrfRefused)
    async def csrf(request: Request, exc: CsrfRefused) -> Response:
        return _error_page(request, 403, "Refused", "The form did not come from this session.")

    @app.exception_handler(WriteRefused)
    async def read_only(request: Request, exc: WriteRefused) -> Response:
        return _error_page(
            request, 403, "Refused", "This API key may only read: nothing was changed."
        )

    @app.exception_handler(KernexError)
    async def domain_error(request: Request, exc: KernexError) -> Response:
        # On a dashboard page a missing device or a refused change is a page; elsewhere the
        # API's problem+json, as before.
        if request.url.path.startswith(f"{UI_PATH}/"):
            return _error_page(request, exc.status, exc.title, exc.detail)
        return await handle_kernex_error(request, exc)
