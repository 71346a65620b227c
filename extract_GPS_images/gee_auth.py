"""Earth Engine authentication and initialisation (the only place ``ee.Initialize`` runs).

The Cloud project comes from the ``project`` argument, else the environment
(``EE_PROJECT``, then ``GOOGLE_CLOUD_PROJECT``). Credentials are the user's own
(``earthengine authenticate`` stores them outside the project) or a service-account
key file given by path. Nothing here writes or logs a secret: the key file is read by
the client library; only the service account's e-mail is shown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ee
import google.auth.exceptions

PROJECT_ENV_VARS: tuple[str, ...] = ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT")
KEY_ENV_VAR = "EE_SERVICE_ACCOUNT_KEY"

HOW_TO_AUTHENTICATE = """\
Earth Engine needs credentials and a Cloud project registered for Earth Engine:
  1. once per machine: `earthengine authenticate` (or, in Python, `ee.Authenticate()`);
     on a server without a browser: `earthengine authenticate --auth_mode=notebook`;
  2. the project: pass --project MY-PROJECT (notebook: gee_project = "MY-PROJECT") or
     `export EE_PROJECT=MY-PROJECT`;
  3. or a service account: --service-account-key /path/key.json (or EE_SERVICE_ACCOUNT_KEY),
     the account registered for Earth Engine in that project.
See https://developers.google.com/earth-engine/guides/auth"""


class GeeAuthError(RuntimeError):
    """Earth Engine cannot be initialised; the message says how to fix it."""


def resolve_project(project: str | None = None) -> str:
    """The Cloud project: ``project``, else ``EE_PROJECT``, else ``GOOGLE_CLOUD_PROJECT``.

    Raises:
        GeeAuthError: none is set.
    """
    if project:
        return project
    for var in PROJECT_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    raise GeeAuthError(
        f"no Earth Engine project given (argument, or {' / '.join(PROJECT_ENV_VARS)}).\n"
        + HOW_TO_AUTHENTICATE
    )


def service_account_email(key_file: str | Path) -> str:
    """The ``client_email`` of a service-account key file (the key itself is not kept).

    Raises:
        GeeAuthError: the file is missing or is not a service-account key.
    """
    path = Path(key_file).expanduser()
    if not path.is_file():
        raise GeeAuthError(f"service-account key file not found: {path}")
    try:
        email = json.loads(path.read_text(encoding="utf-8")).get("client_email")
    except (ValueError, AttributeError):
        email = None
    if not email:
        raise GeeAuthError(f"{path} is not a service-account key file (no 'client_email')")
    return str(email)


def initialize(
    *,
    project: str | None = None,
    service_account_key: str | Path | None = None,
    deadline_s: float | None = None,
) -> str:
    """Initialise Earth Engine; return a one-line description (project and identity).

    Args:
        project: Cloud project id (default from the environment).
        service_account_key: path of a service-account JSON key (default from
            ``EE_SERVICE_ACCOUNT_KEY``); without one, the user's stored credentials.
        deadline_s: timeout of each Earth Engine HTTP request.

    Raises:
        GeeAuthError: no project, no credentials, or Earth Engine refused them; the
            message says how to authenticate.
    """
    project = resolve_project(project)
    key = service_account_key or os.environ.get(KEY_ENV_VAR)
    try:
        if key:
            email = service_account_email(key)
            credentials = ee.ServiceAccountCredentials(email, key_file=str(Path(key).expanduser()))
            ee.Initialize(credentials, project=project)
            who = f"service account {email}"
        else:
            ee.Initialize(project=project)
            who = "user credentials"
    except (ee.EEException, google.auth.exceptions.GoogleAuthError) as error:
        raise GeeAuthError(
            f"Earth Engine refused to initialise for project {project!r}: {error}\n"
            + HOW_TO_AUTHENTICATE
        ) from None
    if deadline_s:
        ee.data.setDeadline(int(deadline_s * 1000))
    return f"Earth Engine project {project} ({who})"
