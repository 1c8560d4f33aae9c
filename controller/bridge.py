"""Bringing a node's bridge to the state the pipeline needs, over OVSDB.

The ovsdb room knows OVSDB; the flows room knows table names. This module joins them: the bridge
with its settings, every pipeline table named (so `ovs-ofctl --names` prints them), and
optionally the gateway and tunnel ports.
"""

from __future__ import annotations

from dataclasses import dataclass

from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT
from flows.pipeline import TABLE_NAMES
from ovsdb.client import OvsdbClient, PortInfo

GATEWAY_PORT = "plumb-gw0"
TUNNEL_PORT = "plumb-tun0"
# A fixed datapath id keeps the bridge's identity when ports come and go.
DEFAULT_DATAPATH_ID = "0000504c554d4231"


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    name: str = "br-int"
    datapath_type: str = "system"
    datapath_id: str = DEFAULT_DATAPATH_ID
    tunnel_type: str = "none"  # geneve | vxlan | none
    gateway_mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class NodeBridge:
    gateway: PortInfo | None
    tunnel: PortInfo | None


def ensure_node_bridge(
    remote: str, settings: BridgeSettings, with_gateway: bool = False
) -> NodeBridge:
    """Ensure the bridge, its table names and (optionally) the gateway and tunnel ports."""
    client = OvsdbClient(remote)
    try:
        return ensure_bridge_with(client, settings, with_gateway)
    finally:
        client.close()


def ensure_bridge_with(
    client: OvsdbClient, settings: BridgeSettings, with_gateway: bool = False
) -> NodeBridge:
    client.ensure_bridge(settings.name, settings.datapath_type, settings.datapath_id)
    client.ensure_table_names(settings.name, dict(TABLE_NAMES))
    gateway = tunnel = None
    if with_gateway:
        gateway = client.ensure_gateway_port(
            settings.name, GATEWAY_PORT, GATEWAY_OFPORT, settings.gateway_mac, settings.mtu
        )
    if settings.tunnel_type in ("geneve", "vxlan"):
        tunnel = client.ensure_tunnel_port(
            settings.name, TUNNEL_PORT, settings.tunnel_type, TUNNEL_OFPORT
        )
    else:
        client.delete_port(settings.name, TUNNEL_PORT)
    return NodeBridge(gateway, tunnel)
