"""cni: the CNI executable, the request/response protocol, the agent-side CNI server, netns/veth
plumbing and IPAM. Never imports `controller`: the agent injects what the server needs.
"""
