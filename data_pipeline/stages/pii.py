"""Scrub personal data and secrets: replace each find with a typed placeholder and count it.

Types: email, ip_address, phone, credit_card, iban, ssn, secret -> `<EMAIL>`, `<IP_ADDRESS>`, ...
Every candidate a regex finds is checked before it is replaced (ipaddress, Luhn + card prefixes,
IBAN mod-97 + country length, SSN ranges, entropy of secret values), so version numbers, dates,
ISBNs, prices and documentation IPs stay as they are. Counts go to `doc.metadata["pii"]`
(non-zero types only); a document is never rejected.

    scrubber = PIIConfig().build()
    text, counts = scrubber.scrub("mail me: jane@example.com")  # ("mail me: <EMAIL>", {"email": 1})

Speed: a regex that cannot start with a literal or a plain character class costs ~50 ns per
character of the document, so each detector first finds cheap anchors ('@', runs of digits, "h:h",
':' and '=', literal token prefixes) and runs its real pattern only around them. Every pattern is
linear in the text, pathological inputs included.
"""

from __future__ import annotations

import ipaddress
import math
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check

# Priority order: when two finds overlap, the earlier type wins (a secret's value may hold digits
# or an '@'; an IBAN or card number holds phone-like digit groups).
PII_TYPES = ("secret", "email", "iban", "credit_card", "ssn", "phone", "ip_address")
PLACEHOLDERS = {t: f"<{t.upper()}>" for t in PII_TYPES}

Span = tuple[int, int]
_A = re.ASCII  # [0-9]/\w mean ASCII only: faster, and no other scripts' digits reach int()
# Where numeric PII can be: a digit, then at least 5 digits/separators, then a digit.
_NUM_RUN = re.compile(r"[0-9][0-9 ().+/:-]{5,}[0-9]", _A)
# Right edge shared by numeric types: not glued to a word or to a longer dotted/dashed number.
_NUM_END = r"(?![\w]|[.,/:-][0-9])"


def _glued_left(s: str, i: int) -> bool:
    """True if position i continues a word or a longer number ("x123", "+123", "1.123", "1-123")."""
    if i == 0:
        return False
    prev = s[i - 1]
    return prev.isalnum() or prev in "_+-" or (i >= 2 and prev in ".,/:" and s[i - 2].isdigit())


def _search_all(pattern: re.Pattern, s: str, lo: int, hi: int, accept: Callable) -> Iterator[Span]:
    """Yield the spans `accept(match)` approves; after a refusal, retry one character later."""
    pos = lo
    while (m := pattern.search(s, pos, hi)) is not None:
        span = accept(m)
        if span is None:
            pos = m.start() + 1
        else:
            yield span
            pos = span[1]


def _merge(spans: list[Span], n: int, left: int, right: int) -> list[Span]:
    """Grow each span by the margins, clip to [0, n] and merge the overlapping ones."""
    out: list[list[int]] = []
    for s, e in spans:
        s, e = max(0, s - left), min(n, e + right)
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# --- email -----------------------------------------------------------------------------------
# Found from each '@': the domain is matched forwards, the local part walked backwards, so no
# position is scanned twice however many '@' a document holds.
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})(?![\w-]|\.[A-Za-z0-9])", _A
)
_EMAIL_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
# "logo@2x.png" is a retina image name, not an address.
_FILE_TLDS = frozenset("png jpg jpeg gif svg webp bmp ico tif tiff avif".split())


def _find_emails(text: str) -> Iterator[Span]:
    at = text.find("@")
    while at != -1:
        d = _EMAIL_DOMAIN.match(text, at + 1, at + 256)
        s = at
        while s > 0 and at - s < 64 and text[s - 1] in _EMAIL_LOCAL_CHARS:
            s -= 1
        while s < at and not text[s].isalnum():
            s += 1  # a local part starts with a letter or digit
        local_ok = s < at and not (s > 0 and text[s - 1] in _EMAIL_LOCAL_CHARS)  # else longer than 64
        if d is not None and local_ok and d["tld"].lower() not in _FILE_TLDS:
            yield s, d.end()
            at = text.find("@", d.end())
        else:
            at = text.find("@", at + 1)


# --- IP addresses --------------------------------------------------------------------------------
# Not followed by more of a dotted number or a build suffix ("3.0.5.130-5a1e7").
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.[0-9]|-[0-9A-Za-z])", _A)
# Dotted quads after these are versions, sections or ASN.1 object ids ("2.5.29.17"), not hosts.
_NOT_AN_IP_BEFORE = re.compile(
    r"(?:(?:version|release|build|firmware|update|patch|revision|section|chapter|identifier)s?"
    r"|\b(?:v|ver|rel|rev|fw|oid|sec|step|rule|table|fig|figure))[._\"']{0,3}\s*[:#=(]?\s*[\"']?$"
    r"|(?:[~=!<>]=|§)\s*$",
    re.I | _A,
)
_V6_ANCHOR = re.compile(r":[0-9A-Fa-f]{0,4}:", _A)
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")
# Reserved for documentation (RFC 5737, RFC 3849, RFC 9637, RFC 6676): examples, never a person.
_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "233.252.0.0/24",
        "2001:db8::/32",
        "3fff::/20",
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if any(ip.version == n.version and ip in n for n in _DOC_NETS):
        return False
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        # Nothing outside 2000::/3 is handed out, so "1::2" or a hex dump is not an address.
        if ip not in _GLOBAL_UNICAST_V6:
            return False
    return ip.is_global


def _ipv4_span(m: re.Match) -> Span | None:
    s, i = m.string, m.start()
    # Not "1.2.3.4.5", "a.1.1.1.1", "v1.2.3.4", "Chrome/120.0.0.0" (a user-agent product version).
    if _glued_left(s, i) or (i and s[i - 1] == ".") or (i >= 2 and s[i - 1] == "/" and s[i - 2].isalnum()):
        return None
    if _NOT_AN_IP_BEFORE.search(s, max(0, i - 24), i):
        return None  # "version 1.2.3.4", "release 8.8.8.8", 'ObjectIdentifier("2.5.29.17")'
    return m.span()


def _ipv6_candidates(text: str) -> Iterator[Span]:
    """Maximal runs of hex digits, ':' and '.' around each "h:h" anchor, trimmed of punctuation."""
    pos, n = 0, len(text)
    while (a := _V6_ANCHOR.search(text, pos)) is not None:
        s, e = a.start(), a.end()
        while s > 0 and text[s - 1] in _V6_CHARS:
            s -= 1
        while e < n and text[e] in _V6_CHARS:
            e += 1
        pos = e
        while e > s and (text[e - 1] == "." or (text[e - 1] == ":" and text[e - 2 : e] != "::")):
            e -= 1  # the full stop or colon of the sentence
        if s < e and text[s] == ":" and text[s : s + 2] != "::":
            s += 1  # "Address:2001:..." keeps its colon
        if s > 0 and (text[s - 1].isalnum() or text[s - 1] == "_"):
            continue
        cand = text[s:e]
        groups = [g for g in cand.split(":") if g]
        # "a::b" in C++, "1::2" in a slice, "00:1a:2b:..." hex dumps are not addresses.
        if len(groups) < 2 or sum(map(len, groups)) < 4 or max(map(len, groups)) < 3:
            continue
        if any(c.isdigit() for c in cand):
            yield s, e


# --- phone ---------------------------------------------------------------------------------------
_PHONE = re.compile(
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567, 1-800-555-1234.
    # Bare "555 123 4567" is left alone: without a +1 or parentheses it is as likely a list of numbers.
    r"(?:(?:\+?1[ .-]?)?\([2-9][0-9]{2}\)[ .-]?[0-9]{3}[ .-][0-9]{4}"
    r"|(?:\+?1[ .-]?)?[2-9][0-9]{2}(?P<sep>[.-])[0-9]{3}(?P=sep)[0-9]{4}"
    r"|\+?1(?P<sep1>[ .-])[2-9][0-9]{2}(?P=sep1)[0-9]{3}(?P=sep1)[0-9]{4}"
    # International, E.164-like: + country code, then separated groups or one run of digits.
    r"|(?P<intl>\+[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\)[ .-]?[0-9]{1,8}|[ .-][0-9]{1,8}){1,7}|\+[1-9][0-9]{7,14}))"
    rf"{_NUM_END}",
    _A,
)


def _phone_span(m: re.Match) -> Span | None:
    s, i = m.string, m.start()
    # Besides the usual glue, "5 +10 20 30 40" is arithmetic, not a number to call.
    if _glued_left(s, i) or (i >= 2 and s[i - 1] == " " and s[i - 2].isdigit()):
        return None
    if m["intl"] is not None:
        num_digits = sum(c.isdigit() for c in m["intl"])
        # E.164 allows at most 15 digits (+1 for a "(0)" trunk prefix); fewer than 8 is a sum or score.
        if not 8 <= num_digits <= 16:
            return None
    return m.span()


# --- credit cards --------------------------------------------------------------------------------
_CARD = re.compile(
    r"[0-9](?:[0-9]{12,18}"
    r"|[0-9]{3}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?P<tail>(?P=s)[0-9]{1,3})?"  # 4-4-4-4(-3)
    r"|[0-9]{3}(?P<t>[ -])[0-9]{6}(?P=t)[0-9]{4,5})" + _NUM_END,  # Amex 4-6-5, Diners 4-6-4
    _A,
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    """Known issuer prefixes (IIN) and the lengths that issuer uses."""
    n, p2, p3, p4, p6 = len(d), int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # Amex
        return n == 15
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or 622126 <= p6 <= 622925 or 3528 <= p4 <= 3589 or p2 == 62:
        return n >= 16  # Discover, JCB, UnionPay
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners
        return n >= 14
    return p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763)  # Maestro


def _is_card(text: str) -> bool:
    d = text.replace(" ", "").replace("-", "")
    return 13 <= len(d) <= 19 and _card_prefix_ok(d) and _luhn_ok(d)


def _card_span(m: re.Match) -> Span | None:
    if _glued_left(m.string, m.start()):
        return None
    if _is_card(m[0]):
        return m.span()
    # "4111 1111 1111 1111 12/25": the optional 5th group grabbed the expiry month.
    if m["tail"] is not None and _is_card(m.string[m.start() : m.start("tail")]):
        return m.start(), m.start("tail")
    return None


# --- IBAN ----------------------------------------------------------------------------------------
_IBAN = re.compile(r"[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])", _A)
# Total IBAN length per country (ISO 13616 registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def _iban_span(m: re.Match) -> Span | None:
    s, start = m.string, m.start()
    length = _IBAN_LENGTHS.get(s[start : start + 2])
    if length is None or (start > 0 and s[start - 1].isalnum()):
        return None
    # The match may run on into a following all-caps word ("BE68 5390 0754 7034 FROM"): cut it at
    # the country's length, which must fall on the end or a space.
    chars, end = [], start
    while end < m.end() and len(chars) < length:
        if s[end] != " ":
            chars.append(s[end])
        end += 1
    if len(chars) != length or (end < m.end() and s[end] != " "):
        return None
    iban = "".join(chars)
    number = int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4]))
    return (start, end) if number % 97 == 1 else None


# --- US social security numbers --------------------------------------------------------------
_SSN = re.compile(r"[0-9]{3}(?P<s>[- ])[0-9]{2}(?P=s)[0-9]{4}" + _NUM_END + r"(?! [0-9])", _A)


def _ssn_span(m: re.Match) -> Span | None:
    area, group, serial = m[0][:3], m[0][4:6], m[0][7:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None  # never issued
    return None if _glued_left(m.string, m.start()) else m.span()


# --- secrets ---------------------------------------------------------------------------------------
# Each candidate pattern is a literal followed by one greedy run, so the engine jumps between
# literals and never backtracks (a document of "sk-sk-sk-..." stays linear); `full` then says what
# the candidate must be. `lead` counts token characters before the match ("s" of "sk-").
_SECRET_RULES: tuple[tuple[re.Pattern, int, re.Pattern | None], ...] = tuple(
    (re.compile(candidate, _A), lead, re.compile(full, _A) if full else None)
    for candidate, lead, full in (
        # AWS access key ids; Google API keys (fixed length, nothing to backtrack).
        (
            r"A(?:(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])|Iza[A-Za-z0-9_-]{35}(?![\w-]))",
            0,
            None,
        ),
        (
            r"g(?:h[pousr]_[A-Za-z0-9]*|ithub_pat_\w*)",
            0,
            r"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244}",
        ),  # GitHub
        (r"xox[a-z]-[A-Za-z0-9-]*", 0, r"xox[abposr]-[A-Za-z0-9-]{10,250}"),  # Slack
        # Stripe sk_live_/rk_live_/pk_live_; OpenAI-style sk-..., long and with digits and capitals,
        # so "sk-learn" or "risk-free" never match.
        (
            r"k(?<=[spr]k)(?:_live_[A-Za-z0-9]*|-[A-Za-z0-9_-]*)",
            1,
            r"[spr]k_live_[A-Za-z0-9]{16,247}|sk-(?=[\w-]*[0-9])(?=[\w-]*[A-Z])[A-Za-z0-9_-]{32,250}",
        ),
        (
            r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}",
            0,
            r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        ),  # JWT
    )
)
# PEM private key, also inside JSON strings ("\\n"). The body may not contain "-----", so each
# BEGIN scans only up to the next marker; a truncated block ends with its last base64 line.
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?P<body>(?:[A-Za-z0-9+/=\s\\:,.]|-(?!----))*)"
    r"(?P<end>-----END[A-Z0-9 ]*PRIVATE KEY-----)?",
    _A,
)
_PEM_BASE64_LINES = re.compile(r"(?:(?:\s|\\n)*[A-Za-z0-9+/=]{16,})+", _A)


def _pem_span(m: re.Match) -> Span | None:
    if m["end"] is not None:
        return m.span() if sum(c.isalnum() for c in m["body"]) >= 16 else None
    lines = _PEM_BASE64_LINES.match(m.string, m.start("body"))
    return (m.start(), lines.end()) if lines is not None else None


# `db_password = "..."`, `"api_key": "..."`, `GITHUB_TOKEN=...`: found from the ':' or '=', and the
# key name must END with a key word, so `tokenizer = ...` never qualifies.
_KEY_WORDS = ("key", "keys", "secret", "secrets", "token", "tokens", "password", "passwd", "pwd",
              "credential", "credentials")  # fmt: skip
# A letter before "key" must belong to one of these ("apikey"), or it is "monkey: ...".
_KEY_PREFIXES = ("api", "secret", "access", "private", "auth", "client", "signing", "encryption", "master")
_AWS_SECRET_KEYS = ("secret_access_key", "secretaccesskey")
_ASSIGNED_VALUE = re.compile(r"(?::=|=>|[:=])[ \t]*(?P<q>[\"'`]?)(?P<val>[^\s\"'`,;(){}\[\]<>]*)", _A)
_AWS_SECRET_VALUE = re.compile(r"[A-Za-z0-9/+]{40}\Z", _A)
# A dotted attribute path (self.cfg.token), or a lower/upper-case slug (utf8_encoder, k8s.io/name).
_CODE_NAME = re.compile(
    r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\Z|[a-z0-9]+(?:[._/-][a-z0-9]+)+\Z|[A-Z0-9]+(?:[._/-][A-Z0-9]+)+\Z", _A
)
# Pronounceable chunks ("Public", "Key", "categories"): code names and words, not random keys.
_WORDLIKE = re.compile(r"[A-Z]?[a-z]{2,}|[A-Z]{3,}", _A)
_PLACEHOLDER_WORDS = ("your", "example", "placeholder", "xxxx", "redacted", "changeme", "dummy", "sample", "fake",
                      "mock", "test", "token", "secret", "passw")  # fmt: skip


def _entropy_bits_per_char(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _wordiness(val: str) -> float:
    """Share of `val` in chunks of 3+ letters that are >= 30% vowels (~2% of random base62 keys)."""
    chunks = [w for w in _WORDLIKE.findall(val) if len(w) >= 3]
    return sum(len(w) for w in chunks if sum(c in "aeiouyAEIOUY" for c in w) >= 0.3 * len(w)) / len(val)


def _looks_random(val: str) -> bool:
    low = val.lower()
    if val[0] in "$%{/.~_#<" or "://" in val or any(w in low for w in _PLACEHOLDER_WORDS):
        return False  # ${ENV}, %(var)s, __name__, a path, a URL or a placeholder, not a value
    if _CODE_NAME.match(val) or _wordiness(val) >= 0.6:
        return False  # self.cfg.token, MAX_TOKENS, X25519PublicKey: code, not a credential
    has_digit = any(c.isdigit() for c in val)
    num_classes = has_digit + sum(
        (any(c.islower() for c in val), any(c.isupper() for c in val), any(not c.isalnum() for c in val))
    )
    return has_digit and num_classes >= 2 and _entropy_bits_per_char(val) >= 3.0


def _assigned_secret(text: str, op: int) -> Span | None:
    """The value assigned at operator position `op`, if the key names a secret and the value looks random."""
    j = op
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    if j > 0 and text[j - 1] in "\"'":
        j -= 1
    if j == 0 or not text[j - 1].isalpha():
        return None
    key = text[max(0, j - 20) : j].lower()
    if not key.endswith(_KEY_WORDS):
        return None
    kw = next(w for w in _KEY_WORDS if key.endswith(w))
    before = key[: len(key) - len(kw)]
    if kw.startswith("key") and before[-1:].isalpha() and not before.endswith(_KEY_PREFIXES):
        return None
    m = _ASSIGNED_VALUE.match(text, op, op + 300)  # bounded: "key=key=key=..." stays linear
    if m is None:
        return None
    val, start, end = m["val"], m.start("val"), m.end("val")
    after = text[end : end + 1]
    if m["q"]:
        if after != m["q"]:
            return None
    elif after and after in "([{<":
        return None  # "token = tokens[0]", "key=f(x)": code, not a value
    elif val.endswith("."):  # the full stop of a sentence, not part of the value
        val, end = val[:-1], end - 1
    if not 8 <= len(val) <= 256:
        return None
    # An AWS secret key is known by its name and shape, whatever its letters look like.
    aws = key.endswith(_AWS_SECRET_KEYS) and _AWS_SECRET_VALUE.match(val) is not None
    return (start, end) if aws or _looks_random(val) else None


def _find_secrets(text: str) -> Iterator[Span]:
    if "PRIVATE KEY" in text:
        yield from (span for m in _PEM.finditer(text) if (span := _pem_span(m)) is not None)
    for candidate, lead, full in _SECRET_RULES:
        for m in candidate.finditer(text):
            s, e = m.start() - lead, m.end()
            glued = s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_-")
            if not glued and (full is None or full.fullmatch(text, s, e) is not None):
                yield s, e
    for op in ":=":
        i = text.find(op)
        while i != -1:
            if (span := _assigned_secret(text, i)) is not None:
                yield span
            i = text.find(op, i + 1)


# type -> (pattern, accept, characters around each digit run to search). An IBAN reaches up to ~30
# characters beyond its digits ("GB82 WEST 1234..."); the others need 2 for their edge checks.
_NUMERIC_RULES: dict[str, tuple[re.Pattern, Callable[[re.Match], Span | None], int]] = {
    "iban": (_IBAN, _iban_span, 34),
    "credit_card": (_CARD, _card_span, 2),
    "ssn": (_SSN, _ssn_span, 2),
    "phone": (_PHONE, _phone_span, 2),
}


@dataclass
class PIIConfig:
    enabled: bool = True
    """Run this stage."""
    types: list[str] = field(default_factory=lambda: list(PII_TYPES))
    """Which kinds to scrub: any of email, ip_address, phone, credit_card, iban, ssn, secret."""
    ip_public_only: bool = True
    """Scrub only public IPs (not private, loopback, link-local, reserved or documentation ranges)."""

    def __post_init__(self) -> None:
        check(len(self.types) > 0, "pii.types", self.types, f"a non-empty subset of {list(PII_TYPES)}")
        for t in self.types:
            check(t in PII_TYPES, "pii.types", self.types, f"a subset of {sorted(PII_TYPES)}")
        check(len(set(self.types)) == len(self.types), "pii.types", self.types, "no repeated type")

    def build(self) -> PIIScrubber:
        return PIIScrubber(self)


class PIIScrubber(Stage):
    name = "pii"

    def __init__(self, cfg: PIIConfig):
        self.cfg = cfg
        self.types = [t for t in PII_TYPES if t in cfg.types]

    def process(self, doc: Doc) -> Doc | Reject:
        doc.text, doc.metadata["pii"] = self.scrub(doc.text)
        return doc

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """Return the text with placeholders and {type: count} for the types found (no zeros)."""
        found = self.find(text)
        if not found:
            return text, {}
        pieces, pos = [], 0
        for s, e, t in found:
            pieces += (text[pos:s], PLACEHOLDERS[t])
            pos = e
        pieces.append(text[pos:])
        return "".join(pieces), dict(Counter(t for _, _, t in found))

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, type) finds, sorted by start; earlier types win overlaps."""
        starts: list[int] = []
        kept: list[tuple[int, int, str]] = []
        runs = [m.span() for m in _NUM_RUN.finditer(text)]
        for t in self.types:
            for s, e in self._detect(t, text, runs):
                i = bisect_right(starts, s)
                if (i and kept[i - 1][1] > s) or (i < len(kept) and kept[i][0] < e):
                    continue  # overlaps a find of a higher-priority type
                starts.insert(i, s)
                kept.insert(i, (s, e, t))
        return kept

    def _detect(self, t: str, text: str, runs: list[Span]) -> Iterator[Span]:
        if t == "secret":
            yield from _find_secrets(text)
        elif t == "email":
            yield from _find_emails(text)
        elif t == "ip_address":
            # IPv6 first, so "::ffff:8.8.8.8" is one address rather than a prefix and an IPv4.
            for s, e in _ipv6_candidates(text):
                if self._ip_ok(text[s:e]):
                    yield s, e
            if "." in text:
                for lo, hi in _merge(runs, len(text), 0, 2):
                    yield from _search_all(_IPV4, text, lo, hi, self._ipv4_span)
        else:
            pattern, accept, margin = _NUMERIC_RULES[t]
            for lo, hi in _merge(runs, len(text), margin, margin):
                yield from _search_all(pattern, text, lo, hi, accept)

    def _ipv4_span(self, m: re.Match) -> Span | None:
        span = _ipv4_span(m)
        return span if span is not None and self._ip_ok(m[0]) else None

    def _ip_ok(self, cand: str) -> bool:
        try:
            ip = ipaddress.ip_address(cand)
        except ValueError:
            return False
        return _is_public(ip) if self.cfg.ip_public_only else True
