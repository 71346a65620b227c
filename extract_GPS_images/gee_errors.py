"""Which Earth Engine failures are transient, and what to tell the user about the rest.

The client library retries some HTTP errors itself; what is left after its retries
reaches us as ``googleapiclient.errors.HttpError`` (with a status), as
``ee.EEException(reason)`` (the status folded into the text, e.g. ``"The service is
currently unavailable."`` for 503) or as a transport error (no network: ``requests`` /
``httplib2`` / socket errors). :func:`is_retryable` says which are worth the same
backoff again; :func:`network_message` turns a network failure into one sentence that
names the step and what to check.
"""

from __future__ import annotations

import re
import socket

import ee

#: HTTP statuses worth retrying: quota / rate limit and transient server errors.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Earth Engine turns HTTP errors into ``EEException(reason)``; these reasons are transient.
_RETRYABLE_MESSAGE = re.compile(
    r"too many|quota|rate limit|resource.?exhausted|\b429\b|\b50[0234]\b|internal error|"
    r"backend error|unavailable|temporarily|timed? ?out|deadline|try again|"
    r"connection (?:reset|aborted|refused)",
    re.IGNORECASE,
)
ENDPOINT = "https://earthengine.googleapis.com"
HIGH_VOLUME_ENDPOINT = "https://earthengine-highvolume.googleapis.com"


class GeeNetworkError(RuntimeError):
    """Earth Engine could not be reached; the message names the step and what to check."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types of a failed connection (no network, DNS, refused, reset)."""
    kinds: list[type[BaseException]] = [
        ConnectionError,
        socket.gaierror,
        socket.timeout,
        TimeoutError,
    ]
    try:
        import requests  # noqa: PLC0415 (optional transports of the client library)

        kinds += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover
        pass
    try:
        import httplib2  # noqa: PLC0415

        kinds += [httplib2.ServerNotFoundError, httplib2.HttpLib2Error]
    except ImportError:  # pragma: no cover
        pass
    try:
        import google.auth.exceptions  # noqa: PLC0415

        kinds.append(google.auth.exceptions.TransportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


TRANSPORT_ERRORS = _transport_errors()


def is_network_error(error: BaseException) -> bool:
    """Whether ``error`` is a failed connection rather than an answer of the service."""
    return isinstance(error, TRANSPORT_ERRORS)


def is_retryable(error: BaseException) -> bool:
    """Whether a failed request is worth retrying: quota, server errors (500-504, also
    as ``EEException`` text such as ``"The service is currently unavailable."``),
    timeouts and failed connections."""
    if is_network_error(error):
        return True
    status = getattr(getattr(error, "resp", None), "status", None)
    if status is not None:
        return int(status) in RETRYABLE_STATUS
    if isinstance(error, ee.EEException):
        return bool(_RETRYABLE_MESSAGE.search(str(error)))
    return False


def network_message(step: str, error: BaseException) -> str:
    """One sentence for a network failure: the step, the error, what to check."""
    return (
        f"could not reach Earth Engine while {step} ({type(error).__name__}: {error}); "
        f"check the internet connection of this machine (proxy, firewall, VPN) and that "
        f"{ENDPOINT} answers, then run the same command again: it resumes where it stopped"
    )
