"""What a client may send, checked before anything reaches the store or a log line.

Every client may be hostile (issue 17's review). Protobuf lets a uint64 carry
values SQLite cannot store (>= 2**63: an UNKNOWN with a traceback), a uint32
carry 4 billion "samples" (an aggregation weight that claims the federation),
a float carry -1e38 (a score that steers selection), and a string carry 4 MB
or a newline (a forged log line). Each is refused here with INVALID_ARGUMENT
and one sentence.
"""

from __future__ import annotations

import math
import unicodedata

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .coordinator import InvalidSubmission

MAX_ID = (1 << 62) - 1  # ids and round numbers: far beyond any run, far below SQLite's 2**63
MAX_SAMPLES = 1_000_000  # a client's claimed data size (its aggregation weight) is at most this
MAX_SCORE = 1e6  # a reported loss; finite and bounded
MAX_NAME_CHARS = 128
MAX_KEY_CHARS = 128  # idempotency keys
MAX_HASH_CHARS = 71  # "sha256:" + 64 hex digits
_INTEGER_TYPES = {
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
}  # fmt: skip


def check_integers(message: Message, where: str = "") -> None:
    """Every integer field, nested and repeated, in [0, MAX_ID]."""
    for field, value in message.ListFields():
        name = f"{where}{field.name}"
        values = list(value) if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                check_integers(item, f"{name}.")
        elif field.type in _INTEGER_TYPES:
            for item in values:
                if not 0 <= item <= MAX_ID:
                    raise InvalidSubmission(f"{name} = {item} is out of range [0, 2**62)")


def client_name(raw: str) -> str:
    """The name a client is known by: NFKC-normalised, printable, no bidi controls, <= 128 chars.

    NFKC folds compatibility look-alikes (full-width letters, ligatures) into one name, so
    "ｃlient-1" cannot pose as a second "client-1"; control, format (bidi overrides, zero-width)
    and separator characters other than a plain space are refused, so a name cannot break a
    log line or hide its text.
    """
    name = unicodedata.normalize("NFKC", raw)
    if not name.strip():
        raise InvalidSubmission("client_name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidSubmission(f"client_name is {len(name)} characters; at most {MAX_NAME_CHARS}")
    for ch in name:
        category = unicodedata.category(ch)
        if ch != " " and (category[0] in "CZ"):
            raise InvalidSubmission(
                f"client_name holds a control, format or separator character (U+{ord(ch):04X})"
            )
    return name


def num_samples(n: int) -> int:
    if not 1 <= n <= MAX_SAMPLES:
        raise InvalidSubmission(f"num_samples must be in [1, {MAX_SAMPLES:,}], got {n}")
    return n


def score(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None  # "no score" (e.g. under DP no loss is reported): the last good one stays
    if not (math.isfinite(value) and abs(value) <= MAX_SCORE):
        raise InvalidSubmission(f"score must be finite and within +-{MAX_SCORE:g}, got {value}")
    return value


def short_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidSubmission(f"{field} is {len(value)} characters; at most {limit}")
    if any(unicodedata.category(ch)[0] == "C" for ch in value):
        raise InvalidSubmission(f"{field} holds a control or format character")
    return value
