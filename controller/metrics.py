"""The agent's Prometheus metrics, declared once, all named `plumb_agent_*`.

They live in this module's own `REGISTRY` (with the process, platform and GC collectors) rather
than the client library's global one, so that the health server exposes exactly these and tests
can read them without picking up strangers. Rooms update them; `controller.health` serves them.
"""

from __future__ import annotations

from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

PREFIX = "plumb_agent"

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Flow commits are sub-millisecond to seconds (a full replay); CNI calls are milliseconds to the
# ~30 s the CNI server waits for the network to be ready.
_FLOW_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BUILD_INFO = Info(f"{PREFIX}_build", "Version of the running agent.", registry=REGISTRY)

# --- pods and flows ---

LOCAL_PODS = Gauge(
    f"{PREFIX}_local_pods", "Pods on this node attached to the bridge.", registry=REGISTRY
)
FLOWS = Gauge(
    f"{PREFIX}_flows",
    "OpenFlow flows the agent has installed, per table.",
    ["table"],
    registry=REGISTRY,
)
FLOW_OPERATIONS = Counter(
    f"{PREFIX}_flow_operations",
    "Flow modifications committed to the switch, by operation (add, modify, delete).",
    ["operation"],
    registry=REGISTRY,
)
FLOW_OPERATION_SECONDS = Histogram(
    f"{PREFIX}_flow_operation_duration_seconds",
    "Latency of switch operations, by operation (bundle, dump, replay).",
    ["operation"],
    buckets=_FLOW_BUCKETS,
    registry=REGISTRY,
)
FLOW_OPERATION_ERRORS = Counter(
    f"{PREFIX}_flow_operation_errors",
    "Switch operations that failed, by operation.",
    ["operation"],
    registry=REGISTRY,
)

# --- CNI ---

CNI_REQUESTS = Counter(
    f"{PREFIX}_cni_requests",
    "CNI requests served, by command (ADD, DEL, CHECK, ...) and result (success, error).",
    ["command", "result"],
    registry=REGISTRY,
)
CNI_REQUEST_SECONDS = Histogram(
    f"{PREFIX}_cni_request_duration_seconds",
    "Latency of CNI requests, by command.",
    ["command"],
    buckets=_CNI_BUCKETS,
    registry=REGISTRY,
)

# --- NetworkPolicy ---

NETWORK_POLICIES = Gauge(
    f"{PREFIX}_network_policies",
    "NetworkPolicies the agent knows.",
    registry=REGISTRY,
)
NETWORK_POLICY_RULES = Gauge(
    f"{PREFIX}_network_policy_rules",
    "NetworkPolicy rules realised as conjunctions on this node, by direction.",
    ["direction"],
    registry=REGISTRY,
)

# --- sources and the store ---

STORE_OBJECTS = Gauge(
    f"{PREFIX}_store_objects",
    "Objects in the local store, by kind.",
    ["kind"],
    registry=REGISTRY,
)
WATCH_EVENTS = Counter(
    f"{PREFIX}_watch_events",
    "Watch events received from the API server, by stream and event type.",
    ["stream", "type"],
    registry=REGISTRY,
)
LISTS = Counter(
    f"{PREFIX}_lists",
    "Full lists (initial sync and relists after 410 Gone), by stream.",
    ["stream"],
    registry=REGISTRY,
)
WATCH_ERRORS = Counter(
    f"{PREFIX}_watch_errors",
    "Failed lists and watches, by stream and reason (gone, http_NNN, connection, ...).",
    ["stream", "reason"],
    registry=REGISTRY,
)
SYNCED = Gauge(
    f"{PREFIX}_synced",
    "1 once a stream has completed its first full list.",
    ["stream"],
    registry=REGISTRY,
)
SOURCE_LAST_CHANGE = Gauge(
    f"{PREFIX}_source_last_change_timestamp_seconds",
    "When the source last changed an object in the store (Unix time); absent until the first "
    "change after the agent's start.",
    ["source"],
    registry=REGISTRY,
)
LAST_SYNC = Gauge(
    f"{PREFIX}_last_sync_timestamp_seconds",
    "When the agent last had every change of its source committed to the bridge by every "
    "reconciler (Unix time): its start, then each change once the reconcilers are idle again.",
    registry=REGISTRY,
)


def _version() -> str:
    try:
        return metadata.version("plumb")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version()})
