"""Kernex device identity: certificate authorities, device certificates, revocation."""
