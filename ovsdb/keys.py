"""external_ids keys, declared once: the agent's durable memory on the node.

Pod ports carry the attachment (container id, ifname, pod namespace and name, IP, MAC, netns);
the bridge carries the restart round.
"""

PORT_TYPE = "plumb.type"
PORT_TYPE_POD = "pod"
PORT_TYPE_GATEWAY = "gateway"
PORT_TYPE_TUNNEL = "tunnel"

CONTAINER_ID = "plumb.container-id"
IFNAME = "plumb.ifname"
NETWORK = "plumb.network"
POD_NAMESPACE = "plumb.pod-namespace"
POD_NAME = "plumb.pod-name"
NETNS = "plumb.netns"
IP = "plumb.ip"
MAC = "plumb.mac"
GATEWAY = "plumb.gateway"

BRIDGE_ROUND = "plumb.round"


def normalise(key: str) -> str:
    """Accept python-friendly filter names (pod_name) for the dotted keys (plumb.pod-name)."""
    if key.startswith("plumb."):
        return key
    return "plumb." + key.replace("_", "-")
