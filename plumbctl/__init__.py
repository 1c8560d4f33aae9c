"""plumbctl: the operator's command line. Inspection of pipeline, flows and policy, and the lab."""
