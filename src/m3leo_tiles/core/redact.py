"""Credentials out of every message: what an error or log line may not carry.

Manifests, ``fetch.log`` and chips travel with datasets, and a terminal is pasted into issues.
Library errors quote the request they failed on, and a request URL can carry a credential
(``...?key=API_KEY`` from the Earth Engine client, a signed ``X-Amz-Signature=`` URL, an
``https://user:password@host`` mirror). So every place where an exception or a message becomes
text (``errors.first_line``, the worker's reasons, the CLI's ``error:`` line, the run's log
handlers, chip tags) passes it through ``redact``: the secret value becomes ``***`` and the
rest stays readable (``key=***``), so the message still says which request failed.

Besides those forms, the values of the environment variables that hold credentials are
replaced wherever they appear (a message that quotes a key without ``key=`` in front of it).
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
# Environment variables whose values are credentials (Earth Engine, NASA Earthdata).
SECRET_ENVS = ("M3LEO_EE_API_KEY", "EARTHDATA_TOKEN", "EARTHDATA_PASSWORD")
MIN_SECRET = 6  # shorter values would mask ordinary words

# ``name=value`` in a query string, a form or a message: API keys, tokens, AWS signatures.
_PARAMETER = re.compile(
    r"(?<![\w-])((?:api[_-]?)?key|(?:access|refresh|id|auth|security)?[_-]?token"
    r"|x-amz-(?:signature|credential|security-token)|signature|sig|password|passwd|secret)"
    r"(=|%3D)([^&\s'\"<>#;,)]+)",
    re.IGNORECASE,
)
# ``scheme://user:password@host``: the password part (also once a path joined ``//`` to ``/``).
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*:/{1,2}[^/\s:@]*):([^@\s/]+)@", re.IGNORECASE)
# ``Authorization: Bearer abc`` in a header dump, also ``'Authorization': 'Basic abc'``.
_AUTHORIZATION = re.compile(
    r"((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token|digest)\s+)?"
    r"[^\s'\",;}]+",
    re.IGNORECASE,
)


def _authorization(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme + ' ' if scheme else ''}{MASK}"


def _secret_values() -> list[str]:
    """Credentials set in this process's environment, longest first (one may contain another)."""
    values = {os.environ.get(name, "").strip() for name in SECRET_ENVS}
    return sorted((v for v in values if len(v) >= MIN_SECRET), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``***``; idempotent."""
    if not text:
        return text
    text = _PARAMETER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    text = _AUTHORIZATION.sub(_authorization, text)
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's final text (and traceback) before any
    handler formats it: a log line reaches ``fetch.log`` or the terminal without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
