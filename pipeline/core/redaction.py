"""Secrets never reach a file we write or a line we print: the one redaction that manifests, TRL's
arguments, error messages and tracebacks all go through.

    redact({"hub_token": "abc", "eos_token": "<|im_end|>"})  # {"hub_token": "<redacted>", "eos_token": "<|im_end|>"}
    redact_text("http://me:pw@host/v1 hf_abcdefghijklmnopqrstuv")  # "http://me:<redacted>@host/v1 <redacted>"

A value is a secret when its key names one (`hub_token`, `api_key`, `password`, ...; not a special
token such as `eos_token`, nor `api_key_env`, which names a variable), when it has the shape of one
wherever it stands (a Hugging Face, OpenAI, GitHub, Slack or AWS token; the password of a URL's
`user:password@host`; a bearer token), or when this process was handed it as one (`remember`: the
recipe's secret-keyed values as it is loaded, an API key read from the environment), so that an
error echoing the value does not show it either.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|credentials?|api_?key|access_key|secret_key|"
                        r"private_key)$", re.I)
SPECIAL_TOKENS = {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Real tokens are long (hf_ + 34, sk- + 40 or more, ghp_ + 36): a shorter run after the prefix is a name
# (a model or data path such as hf_SmolLM3midtraining), which the manifest must show.
TOKEN_SHAPES = re.compile(r"""
      \bhf_[A-Za-z0-9]{30,}              # Hugging Face
    | \bsk-[A-Za-z0-9_-]{30,}            # OpenAI and servers that copy its keys
    | \bgh[pousr]_[A-Za-z0-9]{30,}       # GitHub
    | \bgithub_pat_[A-Za-z0-9_]{30,}
    | \bxox[abposr]-[A-Za-z0-9-]{10,}    # Slack
    | \bAKIA[0-9A-Z]{16}\b               # AWS access key id
""", re.X)
# the password runs to the last @ before the host, as urllib reads it (it may hold an unescaped @)
URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s]+@", re.I)
BEARER = re.compile(r"(\bBearer\s+|\bAuthorization:\s*\w+\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)
_remembered: set[str] = set()


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key)) and key.lower() not in SPECIAL_TOKENS


def remember(value: Any) -> None:
    """Treat `value` (and every string inside it) as a secret wherever it shows up from now on."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            remember(v)
    elif value is not None and not isinstance(value, bool) and len(str(value)) >= 6:
        _remembered.add(str(value))  # shorter ones would blank out ordinary words and numbers


def remember_secrets(data: Any, key: str = "") -> None:
    """Remember the values under secret keys anywhere in a parsed recipe."""
    if isinstance(data, dict):
        for k, v in data.items():
            remember(v) if is_secret_key(str(k)) else remember_secrets(v, str(k))
    elif isinstance(data, list):
        for v in data:
            remember_secrets(v, key)


def redact_text(text: str) -> str:
    """`text` without anything that has the shape of a secret or was remembered as one."""
    for secret in sorted(_remembered, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    text = BEARER.sub(rf"\1{REDACTED}", text)
    return TOKEN_SHAPES.sub(REDACTED, text)


# a key before its value: `key: value` (YAML, block or flow) or `key=value` (--set), possibly quoted or dotted
KEY = re.compile(r"""(?P<key>[A-Za-z0-9_.-]+)["']?\s*(?::(?=\s|$)|=)\s*""")


def secret_value_start(line: str) -> int | None:
    """Where the value of the first secret key on `line` starts (any key on it, not only the first), or None."""
    for m in KEY.finditer(line):
        if is_secret_key(m.group("key").rsplit(".", 1)[-1]):
            return m.end()
    return None


def redact_key_lines(text: str) -> str:
    """`text` (a parser's message quoting recipe lines, an echoed `--set`) with everything after a secret
    key cut out to the end of its line: a line that failed to parse has no value to remember, and a
    short or oddly shaped secret has no shape to find. A closing quote of the line is kept."""
    out = []
    for line in text.split("\n"):
        start = secret_value_start(line)
        if start is not None and line[start:].strip():
            quote = line.rstrip()[-1] if line.rstrip()[-1] in "'\"" and len(line[start:].strip()) > 1 else ""
            line = line[:start] + REDACTED + quote
        out.append(line)
    return "\n".join(out)


def redact(value: Any, key: str = "") -> Any:
    """A copy of `value` (dicts, lists, strings) as it may be written or shown: values under secret keys
    replaced by `<redacted>`, secrets inside every other string cut out."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if is_secret_key(key) and value not in (None, "", False):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value
