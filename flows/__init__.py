"""flows: the pure room. Flow values, the declared pipeline, register fields, cookies, per-feature
flow builders, ovs-ofctl text rendering, OpenFlow encoding and diffing.

Nothing here opens a socket, starts a thread, reads a clock or logs an effect: builders take the
world as arguments and return flows. Only `flows.encode` imports `os_ken.ofproto`.
"""
