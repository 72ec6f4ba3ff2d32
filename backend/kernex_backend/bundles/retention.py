"""The retention worker: deletes old bundles that nothing needs any more.

A bundle is kept while an unfinished deployment references it, or while any device of its type
reports its version as installed (it is what a rollback would return to). Everything else older
than the retention period goes: its row, an audit event, then its object. A transaction-scoped
advisory lock makes one replica do the work while the others skip the round.
"""

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.service import (
    delete_object_if_unreferenced,
    delete_row,
)
from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.bundles.usage import UNFINISHED_DEPLOYMENT_STATUSES, deployments, devices

ACTOR = "system:retention"
_ADVISORY_LOCK_KEY = 0x4B45524E_4252  # "KERNBR"

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RetentionReport:
    """What one pass decided."""

    ran: bool
    dry_run: bool
    deleted: list[str] = field(default_factory=list)  # "name version"
    kept_in_use: list[str] = field(default_factory=list)
    kept_installed: list[str] = field(default_factory=list)


async def run_retention(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: BundleStorage,
    older_than: dt.timedelta,
    dry_run: bool,
    now: dt.datetime | None = None,
) -> RetentionReport:
    """One retention pass."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
    report = RetentionReport(ran=False, dry_run=dry_run)
    deleted_keys: list[str] = []
    async with sessionmaker() as session:
        locked = (
            await session.exec(select(sa.func.pg_try_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
        ).one()
        if not locked:
            return report
        report.ran = True
        in_use = sa.exists().where(
            deployments.c.bundle_id == col(Bundle.id),
            deployments.c.status.in_(UNFINISHED_DEPLOYMENT_STATUSES),
        )
        installed = sa.exists().where(
            devices.c.device_type == col(Bundle.device_type),
            devices.c.current_version == col(Bundle.version),
        )
        rows = await session.exec(
            select(Bundle, in_use.label("in_use"), installed.label("installed"))
            .where(col(Bundle.created_at) < cutoff)
            .order_by(col(Bundle.created_at))
            .with_for_update(of=Bundle, skip_locked=True)
        )
        for bundle, is_in_use, is_installed in rows:
            label = f"{bundle.name} {bundle.version}"
            if is_in_use:
                report.kept_in_use.append(label)
                continue
            if is_installed:
                report.kept_installed.append(label)
                continue
            report.deleted.append(label)
            if dry_run:
                continue
            deleted_keys.append(bundle.storage_key)
            await delete_row(
                session=session,
                bundle=bundle,
                actor=ACTOR,
                reason=f"retention: older than {older_than.days} days and unused",
            )
        await session.commit()
        # Objects go after the rows are gone; content shared by digest stays while referenced.
        for key in deleted_keys:
            await delete_object_if_unreferenced(session=session, storage=storage, storage_key=key)
    log.info(
        "bundle_retention",
        dry_run=dry_run,
        deleted=report.deleted,
        kept_in_use=len(report.kept_in_use),
        kept_installed=len(report.kept_installed),
    )
    return report
