"""Credentials out of everything this package writes or prints: config dumps, logs,
error messages, EMR requests shown by --dry-run.

Values under a secret-sounding key (spark.hadoop.fs.s3a.secret.key, emr.tags.api-token)
and the user:password part of URLs become ***.
"""

from __future__ import annotations

import re

REDACTED = "***"
_SECRET_WORDS = {"secret", "password", "passwd", "pwd", "token", "credential", "credentials", "keytab", "signature"}
_KEY_QUALIFIERS = {"access", "secret", "private", "api", "session", "account"}
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """fs.s3a.secret.key, aws_access_key_id, api-token: yes; max_new_tokens, vocab_size: no."""
    words = set(re.split(r"[._\-\s]+", str(name).lower()))
    return bool(words & _SECRET_WORDS) or ("key" in words and bool(words & _KEY_QUALIFIERS)) or ("id" in words and "access" in words)


def redact_urls(text: str) -> str:
    """Every URL's user:password@ part in `text` as ***@."""
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


def redact(value, path: str = ""):
    """A copy of a config value (nested dicts and lists) fit for files and logs."""
    if isinstance(value, dict):
        return {k: redact(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, path) for v in value]
    if isinstance(value, str):
        return REDACTED if value and is_secret_key(path) else redact_urls(value)
    return value
