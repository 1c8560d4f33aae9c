"""The Kubernetes source against a fake API server speaking list/watch (lab.fakeapi)."""
