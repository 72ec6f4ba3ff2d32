"""Response headers that keep browsers from misusing API answers: no sniffing, no framing, no
referrer, no caching of fleet data, and HSTS once the API is served over HTTPS.

The interactive docs page (/docs) loads Swagger UI's script and style from a third-party CDN,
so it gets no content security policy; everything else is JSON that no page should run or embed.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API = b"default-src 'none'; frame-ancestors 'none'"
# The dashboard: its own scripts, styles and forms only; no inline code, no other origin.
UI = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP response (errors included)."""

    def __init__(self, app: ASGIApp, *, https: bool, docs_path: str = "/docs") -> None:
        self.app = app
        self._docs_path = docs_path
        self._common = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if https:
            self._common.append((b"strict-transport-security", HSTS.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == self._docs_path:
            policy = []
        elif path == "/ui" or path.startswith("/ui/"):
            policy = [(b"content-security-policy", UI)]
        else:
            policy = [(b"content-security-policy", API)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                added = [*self._common, *policy]
                if b"cache-control" not in present:
                    added.append((b"cache-control", b"no-store"))
                headers.extend(h for h in added if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
