"""Credentials out of everything this package writes or prints: config dumps, logs,
error messages, EMR requests shown by --dry-run.

Values under a secret-sounding key (spark.hadoop.fs.s3a.secret.key, emr.tags.api-token)
and the user:password part of URLs become ***.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import RunConfig

REDACTED = "***"
_SECRET_WORDS = {"secret", "password", "passwd", "pwd", "token", "credential", "credentials", "keytab", "signature", "apikey", "passphrase"}
_KEY_QUALIFIERS = {"access", "secret", "private", "api", "session", "account", "encryption", "signing", "master"}
# Spark's own rule (spark.redaction.regex): any key holding one of these, in any case.
_SPARK_RULE = re.compile(r"secret|password|token|access[.]?key", re.IGNORECASE)
# This package's own keys that hold "token" without being one: counts of tokens, the tokenizer.
_NOT_SECRET = re.compile(r"tokens\b|tokenizer", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
# camelCase and PascalCase words: keyStorePassword -> key Store Password
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(name: str) -> bool:
    """fs.s3a.secret.key, aws_access_key_id, api-token, spark.ssl.keyStorePassword,
    javax.jdo.option.ConnectionPassword, fs.s3a.encryption.key, apikey: yes;
    max_new_tokens, vocab_size, tokenizer.model_url: no. At least what Spark's
    spark.redaction.regex matches, but for this package's token counts and tokenizer."""
    name = str(name)
    words = set(re.split(r"[._\-\s]+", _CAMEL.sub("_", name).lower()))
    by_words = bool(words & _SECRET_WORDS) or ("key" in words and bool(words & _KEY_QUALIFIERS)) or ("id" in words and "access" in words)
    return by_words or bool(_SPARK_RULE.search(_NOT_SECRET.sub("", name)))


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


# The config's secrets, for the launchers: ranks get a redacted config, and the values it
# hides over the driver's secret channel (launchers/secret_channel.py), which the rank
# puts back (training/train.py's with_secrets).
def redacted_dict(config: RunConfig) -> dict:
    """The resolved config for manifests, checkpoints and statistics: never credentials."""
    return redact(dataclasses.asdict(config))


def redacted_yaml(config: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(redacted_dict(config)))


def secret_values(config: RunConfig) -> dict:
    """The values `redacted_dict` hides, as a nested dict of just those keys: what a rank
    started with a redacted config gets from the driver (secret_channel.py, `with_secrets`)."""

    def differing(original, redacted):
        if isinstance(original, dict):
            nested = {k: differing(v, redacted[k]) for k, v in original.items()}
            return {k: v for k, v in nested.items() if v is not None and v != {}}
        return original if original != redacted else None

    return differing(dataclasses.asdict(config), redacted_dict(config))
