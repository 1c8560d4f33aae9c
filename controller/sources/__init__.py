"""controller.sources: where cluster state comes from. Each source feeds the same `Store`.

- `kube`: the Kubernetes API server, list + watch with the official client.
- (the manifests directory source, for labs, lives beside it.)

A source is started, fills the store, marks each kind synced after its first full list, keeps
the store converged while it runs, and stops cleanly: `start()`, `wait_synced(timeout)`, `stop()`.
"""
