"""The CRL at its distribution point: public, like every CRL (it is signed by the issuing CA
and says nothing but which serials are revoked or on hold). Brokers that check certificates
against the distribution point they name (EMQX) fetch it here; see `init-ca --crl-url`."""

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Response

from kernex_backend.core.runtime import optional_component
from kernex_backend.devices import certificates
from kernex_backend.devices.certificates import Pki

router = APIRouter(prefix="/pki", tags=["devices"])

CRL_MEDIA_TYPE = "application/pkix-crl"  # RFC 5280 section 4.2.1.13: DER over HTTP
# Short: a revocation rewrites the CRL at once, and caches between here and the broker should
# not hold the old one much longer than the broker's own refresh.
_MAX_AGE_S = 30


@router.get(
    "/crl",
    response_class=Response,
    responses={
        200: {
            "description": "the current CRL, DER-encoded",
            "content": {CRL_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def crl(pki: Annotated[Pki | None, Depends(optional_component(Pki))]) -> Response:
    """The issuing CA's current CRL (revoked certificates, and quarantined devices' on hold).
    No API key: brokers fetch it from the distribution point named in device certificates.
    503 when no certificate authority is configured."""
    authority = certificates.require(pki).authority
    body = await anyio.to_thread.run_sync(authority.published_crl)
    return Response(
        content=body,
        media_type=CRL_MEDIA_TYPE,
        headers={"Cache-Control": f"public, max-age={_MAX_AGE_S}"},
    )
