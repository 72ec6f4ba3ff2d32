"""The Kernex device protocol, shared by the backend, the device agent and the simulator.

Everything a device and the cloud must agree on lives here and nowhere else: identifier rules,
topic names with their QoS and retain flags, payload size limits and canonical JSON.
"""

from kernex_protocol.ids import DEVICE_ID_PATTERN, InvalidDeviceId, validate_device_id

__all__ = ["DEVICE_ID_PATTERN", "InvalidDeviceId", "validate_device_id"]
