"""Who uses a bundle: an unfinished deployment of it, or devices that run its version.

Deployments and devices refer to bundles, so those domains import this one; to stay below them
(`make check` refuses import cycles between domains) this module reads their tables through
plain table clauses rather than their models. The deployment states that count as unfinished
are named here once; tests/unit/test_bundle_usage.py keeps them equal to the deployments
domain's own list.
"""

from typing import Final

import sqlalchemy as sa

# Deployments in these states may still ask a device for the bundle.
UNFINISHED_DEPLOYMENT_STATUSES: Final = ("scheduled", "running", "paused")

deployments = sa.table(
    "deployments",
    sa.column("id", sa.Uuid),
    sa.column("bundle_id", sa.Uuid),
    sa.column("status", sa.String),
)
devices = sa.table(
    "devices",
    sa.column("device_type", sa.String),
    sa.column("current_version", sa.String),
)
