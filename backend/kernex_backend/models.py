"""Every table model, imported in one place so the metadata is complete (for Alembic too)."""

from sqlmodel import SQLModel

from kernex_backend.api_keys.models import ApiKey
from kernex_backend.audit.models import AuditEvent
from kernex_backend.bundles.models import Bundle
from kernex_backend.deployments.models import Deployment, DeploymentExecution
from kernex_backend.devices.models import Device, PresenceEvent
from kernex_backend.telemetry.models import Heartbeat
from kernex_backend.webhooks.models import Webhook, WebhookDelivery, WebhookEvent

metadata = SQLModel.metadata

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Bundle",
    "Deployment",
    "DeploymentExecution",
    "Device",
    "Heartbeat",
    "PresenceEvent",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
    "metadata",
]
