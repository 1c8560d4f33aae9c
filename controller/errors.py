"""The agent's error vocabulary: reconciler signals and the controller room's errors.

One hierarchy, so callers catch by meaning rather than by origin::

    PlumbError                      anything the controller room raises on purpose
    ├── ConfigError                 a bad configuration value; names the field
    ├── SourceError                 a source of truth cannot be read or understood
    │   └── ResourceExpired         the API server forgot our resourceVersion (HTTP 410 Gone)
    └── ReconcileSignal             how a reconciler asks its work queue to go on
        ├── RetryLater              try this key again after `delay` seconds (None: backoff)
        └── Permanent               do not retry this key until it changes again

Reconcilers raise `RetryLater` or `Permanent`; any other exception from a reconciler is a bug
and is retried with backoff, loudly.
"""

from __future__ import annotations


class PlumbError(Exception):
    """Base of every error the controller room raises on purpose."""


class ConfigError(PlumbError):
    """A configuration value is wrong. `field` names it (or the file, when the file is at fault);
    the message says what was expected and what was found."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config: {field}: {message}")
        self.field = field
        self.reason = message


class SourceError(PlumbError):
    """A source of truth (the Kubernetes API, a manifests directory) failed or answered nonsense."""


class ResourceExpired(SourceError):
    """The API server no longer holds the resourceVersion we asked for: relist."""


class ReconcileSignal(PlumbError):
    """Base of the signals a reconciler raises to steer its work queue."""


class RetryLater(ReconcileSignal):
    """Not done yet (a dependency is missing, a daemon is busy): requeue the key.

    `delay` is seconds to wait; None lets the queue pick its per-key exponential backoff.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"RetryLater delay must be >= 0, got {delay}")
        super().__init__(reason or "retry later")
        self.delay = delay


class Permanent(ReconcileSignal):
    """The key cannot be reconciled as it stands (invalid object): log it and drop it."""
