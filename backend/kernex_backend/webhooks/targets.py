"""Where a webhook may point: http(s) only, no credentials in the URL, and (unless
KERNEX_WEBHOOKS__ALLOW_PRIVATE_TARGETS) no address that reaches the backend's own host or its
cloud metadata service: loopback, link-local, unspecified, multicast, reserved. Checked when a
webhook is saved and again before every delivery (the name may resolve elsewhere later)."""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class TargetRefused(ValueError):
    """The URL is not allowed; the message says why."""


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


async def check_target(url: str, *, allow_private: bool) -> None:
    """Raise TargetRefused unless `url` may receive webhooks."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:  # an unbalanced "[", a port out of range or not a number
        raise TargetRefused(f"the URL does not parse: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the URL must be http:// or https://")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed: sign with the secret")
    if not host:
        raise TargetRefused("the URL has no host")
    if allow_private:
        return
    try:
        infos = await asyncio.to_thread(
            socket.getaddrinfo, host, port or 443, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"the host {host} does not resolve ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if _refused(address):
            raise TargetRefused(
                f"{host} resolves to {address}, a loopback, link-local or reserved address"
            )
