"""The bundles domain names the unfinished deployment states itself (it sits below the
deployments domain); they must stay the deployments domain's own."""

from kernex_backend.bundles.usage import UNFINISHED_DEPLOYMENT_STATUSES, deployments, devices
from kernex_backend.deployments.models import Deployment, DeploymentStatus
from kernex_backend.devices.models import Device


def test_unfinished_states_match_the_deployments_domain() -> None:
    assert set(UNFINISHED_DEPLOYMENT_STATUSES) == {
        s.value for s in DeploymentStatus if not s.finished
    }


def test_the_table_clauses_name_real_columns() -> None:
    assert deployments.name == Deployment.__tablename__
    assert {c.name for c in deployments.c} <= set(Deployment.__table__.c.keys())  # type: ignore[attr-defined]
    assert devices.name == Device.__tablename__
    assert {c.name for c in devices.c} <= set(Device.__table__.c.keys())  # type: ignore[attr-defined]
