"""ovsdb: OVSDB I/O over ovsdbapp/python-ovs. Bridges, ports, interfaces, flow-table names and
external_ids (the agent's durable memory on the node). Errors are always raised.

Imports nothing else of Plumb's.
"""
