"""The tracking server's errors, and a quick check that an http(s) tracking server is there."""

from __future__ import annotations

import time

from components.errors import PipelineError, TransientError, is_transient


class TrackingError(PipelineError):
    """The tracking server refused a request."""


class TrackingUnavailable(TrackingError, TransientError):
    """The tracking server did not answer (down, unreachable, timing out): worth a retry."""


def tracking_error(uri: str, exc: Exception) -> TrackingError:
    """The right :class:`TrackingError` for an MLflow failure at ``uri``."""
    message = f"MLflow tracking server {uri}: {getattr(exc, 'message', exc)}"
    return TrackingUnavailable(message) if is_transient(exc) else TrackingError(message)


# How long Tracker.open tries to reach an http(s) tracking server before giving up: a server that is
# not there is reported in seconds, not after MLflow's retries of every call.
REACH_WITHIN_S = 15.0


def ensure_reachable(uri: str, within_s: float = REACH_WITHIN_S) -> None:
    """Raise :class:`TrackingUnavailable` naming ``uri`` and ``MLFLOW_TRACKING_URI`` unless the server
    at an http(s) ``uri`` answers (any HTTP status: auth and TLS are MLflow's to check) within
    ``within_s`` seconds. Other URIs (a SQLite file, Databricks) are left to MLflow."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    import requests

    deadline = time.monotonic() + within_s
    while True:
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            return
        except requests.exceptions.SSLError:
            return  # it answered
        except requests.RequestException as exc:
            if time.monotonic() + 1 >= deadline:
                raise TrackingUnavailable(
                    f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable: {_why(exc)} "
                    f"for {within_s:g} s; start it, or unset MLFLOW_TRACKING_URI for the project's mlflow.db"
                ) from None
            time.sleep(1)


def _why(exc: Exception) -> str:
    import requests

    text = str(exc).lower()
    if isinstance(exc, requests.Timeout):
        return "no answer"
    if "connection refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "unknown host"
    return type(exc).__name__
