"""Who the broker lets in: the ACL's blocked identities are the revoked devices and the
quarantined ones, and the CRL lists the quarantined devices' certificates as on hold, so their
handshakes are refused until they are released. Every change to either renders the ACL and the
CRL from both, so one never undoes the other."""

import datetime as dt

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import utc_now
from kernex_backend.devices.models import Device
from kernex_provision import broker as broker_files
from kernex_provision.authority import CertificateAuthority


async def quarantined_ids(session: AsyncSession, now: dt.datetime | None = None) -> list[str]:
    """Devices cut off for flooding now."""
    rows = await session.exec(
        select(Device.id).where(col(Device.quarantined_until) > (now or utc_now()))
    )
    return sorted(rows.all())


def publish(
    authority: CertificateAuthority,
    broker: broker_files.BrokerLayout | None,
    quarantined: list[str],
    *,
    reload: str = "signal",
    crl_valid_days: int = 7,
) -> bool:
    """Render the CRL and ACL into the broker folder and have the broker reload them (blocking:
    call in a thread). False when there is no broker folder, or no broker to signal; with
    `reload="watch"` the broker's runner picks the files up itself, so writing them is enough."""
    if broker is None:
        return False
    broker_files.publish_revocations(
        authority, broker, held=quarantined, crl_valid_days=crl_valid_days
    )
    if reload == "watch":
        return True
    return broker_files.reload_broker(broker)
