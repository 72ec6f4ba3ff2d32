"""The broker configuration for EMQX 5, the clustered path: the same listener, identity and ACL
model as the Mosquitto files (broker.py), in EMQX's HOCON and Erlang-term ACL formats.

What differs from Mosquitto (docs/security.md): EMQX checks CRLs only through the CRL
Distribution Point in client certificates, which ours carry once the CA names one (`init-ca
--crl-url`, `crl --url`; the backend serves the CRL there), so certificates issued before that
are refused by the ACL alone (denied everything, and disconnected on their next attempt by
`deny_action = disconnect`) rather than at the handshake; and EMQX must be given the new rules
and told to kick the client through its REST API: emqx_sync.py (`kernex-provision emqx-sync`)
does that.
"""

from pathlib import Path

from kernex_protocol.ids import validate_device_id
from kernex_provision.authority import write_public
from kernex_provision.broker import MAX_PACKET_SIZE, TEMPLATES_DIR, BrokerLayout, load_template

EMQX_CONF = "emqx.conf"
EMQX_ACL = "acl.conf"
# A revocation closes the session at once (emqx-sync); this bounds how long the next handshake
# may still pass on a cached CRL.
CRL_REFRESH = "1m"


def render_emqx_acl(
    layout: BrokerLayout,
    *,
    blocked: list[str],
    service_identities: list[str],
    templates_dir: Path = TEMPLATES_DIR,
) -> Path:
    """Write acl.conf (on rendering, and again on every revocation); returns its path."""
    acl = layout.directory / EMQX_ACL
    blocks = "".join(
        f'{{deny, {{user, "{validate_device_id(name)}"}}, all, ["#"]}}.\n'
        for name in sorted(set(blocked))
    )
    grants = "".join(
        f'{{allow, {{user, "{validate_device_id(name)}"}}, all, ["kernex/v1/devices/#"]}}.\n'
        for name in sorted(set(service_identities))
    )
    write_public(
        acl,
        load_template(templates_dir, "emqx-acl.conf.template")
        .substitute(blocked_identities=blocks, service_identities=grants)
        .encode(),
    )
    return acl


def render_emqx(
    layout: BrokerLayout,
    *,
    port: int,
    bind_address: str,
    blocked: list[str],
    service_identities: list[str],
    crl_check: bool = False,
    templates_dir: Path = TEMPLATES_DIR,
) -> tuple[Path, Path]:
    """Write emqx.conf and acl.conf into the broker directory; returns their paths.
    `crl_check`: the CA names a CRL distribution URL, so EMQX can check certificates there."""
    acl = render_emqx_acl(
        layout, blocked=blocked, service_identities=service_identities, templates_dir=templates_dir
    )
    conf = layout.directory / EMQX_CONF
    write_public(
        conf,
        load_template(templates_dir, "emqx.conf.template")
        .substitute(
            bind_address=bind_address,
            port=port,
            ca_chain=layout.ca_chain,
            server_cert=layout.server_cert,
            server_key=layout.server_key,
            max_packet_size=MAX_PACKET_SIZE,
            acl_file=acl,
            crl_check="true" if crl_check else "false",
            crl_refresh=CRL_REFRESH,
        )
        .encode(),
    )
    return conf, acl
