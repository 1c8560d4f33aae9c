"""ovsdb: OVSDB I/O over ovsdbapp/python-ovs. Bridges, ports, interfaces, flow-table names and
external_ids (the agent's durable memory on the node). Errors are always raised.

Imports nothing else of Plumb's.
"""

import warnings

# python-ovs probes for eventlet on import and warns that eventlet is deprecated; Plumb uses
# native threads, so the warning is noise on every command.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
