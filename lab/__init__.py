"""lab: throwaway networks on one Linux machine. Private Open vSwitch instances (used by tests,
benchmarks and the lab), network namespaces, and the multi-node lab behind `plumbctl lab`.
"""
