"""NASA Earthdata credentials and asf-search sessions.

Credentials are taken only from their conventional places, in this order:
``EARTHDATA_TOKEN`` (an EDL user token), ``EARTHDATA_USERNAME`` + ``EARTHDATA_PASSWORD``,
then the ``machine urs.earthdata.nasa.gov`` entry of ``~/.netrc`` (or ``$NETRC``). They are
never accepted on the command line, never printed and never logged: ``Credentials`` keeps the
secret out of its ``repr`` and every message names only where the credentials came from.

Logging in goes through asf-search's own ``ASFSession`` (``auth_with_token`` /
``auth_with_creds``), the session that then searches and downloads. Its login calls have no
timeout of their own, so ``login`` runs them under a deadline: a silent login server becomes
a one-line error within seconds instead of a hung run.
"""

from __future__ import annotations

import netrc
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from m3leo_tiles.core.errors import CredentialsError

TOKEN_ENV = "EARTHDATA_TOKEN"
USERNAME_ENV = "EARTHDATA_USERNAME"
PASSWORD_ENV = "EARTHDATA_PASSWORD"
DEFAULT_EDL_HOST = "urs.earthdata.nasa.gov"
DEFAULT_CMR_HOST = "cmr.earthdata.nasa.gov"
LOGIN_DEADLINE_S = 30.0
HOW_TO = (
    f"set {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV}, or add 'machine "
    f"{DEFAULT_EDL_HOST} login USER password PASS' to ~/.netrc (chmod 600)"
)


@dataclass(frozen=True)
class Credentials:
    """Where the credentials came from, and the secret itself (kept out of repr)."""

    source: str  # e.g. "EARTHDATA_TOKEN", "~/.netrc": safe to show
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Hosts:
    """The services asf-search talks to (always over https); tests point them elsewhere."""

    cmr: str = DEFAULT_CMR_HOST
    edl: str = DEFAULT_EDL_HOST


def find_credentials(
    edl_host: str = DEFAULT_EDL_HOST, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The first credentials found in the conventional places, or None."""
    environ = os.environ if environ is None else environ
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return Credentials(TOKEN_ENV, token=token)
    username, password = environ.get(USERNAME_ENV, ""), environ.get(PASSWORD_ENV, "")
    if username and password:
        return Credentials(f"{USERNAME_ENV}/{PASSWORD_ENV}", username=username, password=password)
    if username or password:
        missing = PASSWORD_ENV if username else USERNAME_ENV
        raise CredentialsError(f"Earthdata credentials: {missing} is not set; {HOW_TO}")
    path = Path(environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(edl_host)
    except (netrc.NetrcParseError, OSError) as error:
        line = getattr(error, "lineno", None)
        where = f" (line {line})" if line else ""
        raise CredentialsError(f"cannot read {path}{where}; fix the file or {HOW_TO}") from None
    if entry is None or not entry[0] or not entry[2]:
        return None
    return Credentials(str(path), username=entry[0], password=entry[2])


def new_session(hosts: Hosts):  # -> asf_search.ASFSession
    """An asf-search session for these hosts (its own class, so tests can route it)."""
    import asf_search

    return asf_search.ASFSession(edl_host=hosts.edl, cmr_host=hosts.cmr)


def login(session, credentials: Credentials, deadline_s: float = LOGIN_DEADLINE_S) -> None:
    """Authenticate ``session``; refused, unreachable or silent login → CredentialsError."""
    from asf_search.exceptions import ASFAuthenticationError

    def attempt() -> None:
        if credentials.token:
            session.auth_with_token(credentials.token)
        else:
            session.auth_with_creds(credentials.username, credentials.password)

    error = _run_with_deadline(attempt, deadline_s)
    if error is None:
        return
    if isinstance(error, TimeoutError):
        raise CredentialsError(
            f"Earthdata login at {session.edl_host} did not answer within {deadline_s:g} s; "
            "try again later"
        )
    if isinstance(error, ASFAuthenticationError):
        raise CredentialsError(
            f"Earthdata refused the credentials from {credentials.source}: check them ({HOW_TO})"
        )
    raise CredentialsError(
        f"cannot log in to Earthdata at {session.edl_host} ({type(error).__name__}); "
        "check the network and try again"
    )


def _run_with_deadline(call: Callable[[], None], deadline_s: float) -> BaseException | None:
    """Run ``call`` in a daemon thread; its error, TimeoutError, or None when it returned."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # (handed to the caller)
            outcome.append(error)

    thread = threading.Thread(target=target, name="earthdata-login", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if not outcome:
        return TimeoutError()
    return outcome[0]
