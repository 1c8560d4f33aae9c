"""cni: the CNI executable (C, in cni/shim, built by cni.executable), the request/response
protocol, the agent-side CNI server, netns/veth plumbing and IPAM. Never imports `controller`:
the agent injects what the server needs.
"""
