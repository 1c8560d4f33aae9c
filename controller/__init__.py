"""controller: the node agent. Composition root and main, config, the OpenFlow switch connection
(the one room that talks OpenFlow), sources (Kubernetes API, manifests directory), the store,
work queues and reconcilers, health and metrics.
"""
