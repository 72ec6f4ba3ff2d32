"""Signed, expiring download URLs served by the backend itself (local storage backend only),
with HTTP Range support so devices can resume interrupted downloads."""

import re
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from kernex_backend.bundles.storage import LocalStorage, ObjectMissing, StorageDep
from kernex_backend.core.errors import Forbidden, KernexError, NotFound

router = APIRouter(prefix="/bundle-downloads", tags=["bundles"], include_in_schema=False)

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(KernexError):
    """The requested byte range lies outside the object."""

    status = 416
    slug = "range-not-satisfiable"
    title = "Range not satisfiable"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte positions of a single `bytes=` range, None for the whole object."""
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # unsupported or multi-range requests get the whole object (RFC 9110)
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable("an empty suffix range selects nothing", size=size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range starts beyond the object's {size} bytes", size=size)
    return start, end


@router.get("/bundles/{name}")
async def download(
    name: str,
    request: Request,
    storage: StorageDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query(max_length=64)],
) -> Response:
    """Serve an object if the URL's signature is valid and it has not expired."""
    if not isinstance(storage, LocalStorage):
        raise NotFound("download URLs are served by the object store, not by this backend")
    key = f"bundles/{name}"
    if not storage.verify(key, expires, signature, now=time.time()):
        raise Forbidden("the download URL is invalid or has expired; ask for a new one")
    try:
        size = await storage.size(key)
    except ObjectMissing:
        raise NotFound("no such bundle content") from None
    selected = parse_range(request.headers.get("range"), size)
    headers = {"Accept-Ranges": "bytes"}
    if selected is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            storage.read(key), media_type="application/octet-stream", headers=headers
        )
    first, last = selected
    headers["Content-Length"] = str(last - first + 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(
        storage.read(key, first, last - first + 1),
        status_code=206,
        media_type="application/octet-stream",
        headers=headers,
    )
