"""Scrub personal data and secrets: replace each find with a typed placeholder and count it.

Types: email, ip_address, phone, credit_card, iban, ssn, secret -> `<EMAIL>`, `<IP_ADDRESS>`, ...
Every candidate a regex finds is checked before it is replaced (ipaddress; every major card
brand's IIN ranges and lengths + Luhn; IBANs by python-stdnum: registry format + mod-97; SSN
ranges; secrets by detect-secrets' plugin patterns plus ours, assigned values by entropy; phones by libphonenumber for the regions of the document's
language, see pii_phones.py), so version numbers, dates, ISBNs, prices and documentation or
private IPs stay as they are. IPv6 is read in every form (full, compressed, IPv4-suffixed, with a
zone index); with ip_public_only, only documentation, private, loopback, link-local, multicast,
unspecified and site-local addresses stay. Counts go to `doc.metadata["pii"]` (non-zero types
only); a document is never rejected.

    scrubber = PIIConfig().build()
    text, counts = scrubber.scrub("mail me: jane@example.com")  # ("mail me: <EMAIL>", {"email": 1})
    scrubber.scrub("Ruf an: 030 1234567", language="de")      # ("Ruf an: <PHONE>", {"phone": 1})

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

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from stdnum import iban, luhn

from data_pipeline.document import Doc, Reject, Stage
from data_pipeline.stages.pii_phones import find_phones, regions_for
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
_SHARED_V4 = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
# RFC 4007 zone index after '%' ("fe80::1%eth0", "%25eth0" inside a URL).
_V6_ZONE = re.compile(r"%[0-9A-Za-z_~-]+(?:\.[0-9A-Za-z_~-]+)*", _A)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not documentation, private, loopback, link-local, multicast, unspecified (or IPv4 reserved or
    shared). IPv6 outside 2000::/3 counts as public too: any address a text holds may be a person's,
    and an address generator's random one is one."""
    if any(ip.version == n.version and ip in n for n in _DOC_NETS):
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return _is_public(ip.ipv4_mapped)
    if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.version == 4:
        return not ip.is_reserved and ip not in _SHARED_V4
    return not ip.is_site_local


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
        if not any(c.isdigit() for c in cand):
            continue
        zone = _V6_ZONE.match(text, e) if e < n and text[e] == "%" else None
        yield s, (zone.end() if zone else e)  # the zone index goes with the address


# --- credit cards --------------------------------------------------------------------------------
_CARD = re.compile(
    r"[0-9](?:[0-9]{11,18}"
    r"|[0-9]{3}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?P<tail>(?P=s)[0-9]{1,3})?"  # 4-4-4-4(-3)
    r"|[0-9]{3}(?P<t>[ -])[0-9]{6}(?P=t)[0-9]{4,5})" + _NUM_END,  # Amex 4-6-5, Diners 4-6-4
    _A,
)


# Issuer identification number (IIN) ranges and the lengths each brand issues, from the brands'
# published ranges (as Wikipedia's "Payment card number" table collects them): (first, last, lengths).
_IIN_RANGES: tuple[tuple[str, str, str, tuple[int, ...]], ...] = (
    ("visa", "4", "4", (13, 16, 19)),
    ("mastercard", "51", "55", (16,)),
    ("mastercard", "2221", "2720", (16,)),
    ("amex", "34", "34", (15,)),
    ("amex", "37", "37", (15,)),
    ("discover", "6011", "6011", (16, 17, 18, 19)),
    ("discover", "644", "649", (16, 17, 18, 19)),
    ("discover", "65", "65", (16, 17, 18, 19)),
    ("jcb", "3528", "3589", (16, 17, 18, 19)),
    ("jcb", "35", "35", (16,)),  # the whole 35 block at 16 digits: generators (Faker) use it
    ("jcb", "2131", "2131", (15,)),
    ("jcb", "1800", "1800", (15,)),
    ("unionpay", "62", "62", (16, 17, 18, 19)),
    ("diners", "300", "305", (14, 15, 16, 17, 18, 19)),
    ("diners", "3095", "3095", (14, 15, 16, 17, 18, 19)),
    ("diners", "36", "36", (14, 15, 16, 17, 18, 19)),
    ("diners", "38", "39", (14, 16, 17, 18, 19)),
    ("maestro", "50", "50", tuple(range(12, 20))),
    ("maestro", "56", "69", tuple(range(12, 20))),
    ("maestro", "0604", "0604", tuple(range(12, 20))),  # UK Maestro (ex-Switch/Solo)
    ("mir", "2200", "2204", (16, 17, 18, 19)),
)


def _card_prefix_ok(d: str) -> bool:
    """The number starts with a known brand's IIN and has a length that brand issues."""
    return any(
        first <= d[: len(first)] <= last and len(d) in lengths for _, first, last, lengths in _IIN_RANGES
    )


def _is_card(text: str) -> bool:
    d = text.replace(" ", "").replace("-", "")
    return 12 <= len(d) <= 19 and _card_prefix_ok(d) and luhn.is_valid(d)


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


def _iban_span(m: re.Match) -> Span | None:
    """The longest prefix of the match, ending on a group boundary, that python-stdnum accepts as an
    IBAN (registry country and length, BBAN format, mod-97): the match may run on into a following
    all-caps word ("BE68 5390 0754 7034 FROM")."""
    s, start = m.string, m.start()
    if start > 0 and s[start - 1].isalnum():
        return None
    ends = [m.end()] + [i for i in range(m.end() - 1, start, -1) if s[i] == " "]
    for end in ends:
        if iban.is_valid(s[start:end], check_country=False):  # no national bank-registry lookups
            return start, end
    return None


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
# The token patterns of a maintained scanner, detect-secrets (Yelp), plugin by plugin: (plugin,
# the indexes of its patterns we run, or None for all; {pattern index: the group that is the
# secret}, e.g. an AWS secret after its key word or a URL's password, else the whole match).
# Ours above stay for what its plugins lack (Google API keys, Stripe publishable keys,
# fine-grained GitHub tokens, project-scoped OpenAI keys) and for JWTs, OpenAI keys and Slack
# tokens, whose detect-secrets patterns backtrack quadratically on inputs like "eyJeyJeyJ..." or
# "xoxb-1-1-1-...". Left out: plugins whose patterns start with a bare character class (Discord,
# Twilio, Artifactory: "AC" + 32 hex is a hash as often as a key) or run to the end of the line (npm).
_SCANNER_PLUGINS: tuple[tuple[type, tuple[int, ...] | None, dict[int, int]], ...] = (
    (AWSKeyDetector, None, {1: 1}),
    (GitHubTokenDetector, None, {}),
    (GitLabTokenDetector, None, {}),
    (SlackDetector, (1,), {}),  # incoming-webhook URLs
    (StripeDetector, None, {}),
    (BasicAuthDetector, None, {0: 1}),
    (PypiTokenDetector, None, {}),
    (SendGridDetector, None, {}),
    (SquareOAuthDetector, None, {}),
    (TelegramBotTokenDetector, None, {}),
    (MailchimpDetector, None, {}),
    (AzureStorageKeyDetector, None, {}),
)
_SCANNER_RULES: tuple[tuple[re.Pattern, int], ...] = tuple(
    (pattern, groups.get(i, 0))
    for plugin, chosen, groups in _SCANNER_PLUGINS
    for i, pattern in enumerate(plugin.denylist)
    if chosen is None or i in chosen
)
# Private-key blocks: the markers detect-secrets' PrivateKeyDetector looks for.
_PRIVATE_KEY_MARKERS = tuple(p.pattern for p in PrivateKeyDetector.denylist)


_DOC_PASSWORDS = frozenset("pass password passwd pwd pw secret token changeme xxx xxxx".split())


def _scanner_spans(text: str) -> Iterator[Span]:
    for pattern, group in _SCANNER_RULES:
        for m in pattern.finditer(text):
            s, e = m.span(group)
            if s >= e or (group == 0 and s > 0 and (text[s - 1].isalnum() or text[s - 1] == "_")):
                continue
            # "https://user:pass@host", "://<username>:<password>@", "{auth_token}": documentation
            value = text[s:e]
            if group and (value.lower() in _DOC_PASSWORDS or value[0] in "<{$%*" or "*" in value):
                continue
            yield s, e


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
    if any(marker in text for marker in _PRIVATE_KEY_MARKERS):
        yield from (span for m in _PEM.finditer(text) if (span := _pem_span(m)) is not None)
    for candidate, lead, full in _SECRET_RULES:
        for m in candidate.finditer(text):
            s, e = m.start() - lead, m.end()
            glued = s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_-")
            if not glued and (full is None or full.fullmatch(text, s, e) is not None):
                yield s, e
    yield from _scanner_spans(text)
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
}
# Where a phone number can be: digits with spaces, dots, dashes, slashes or brackets between them.
_PHONE_RUN = re.compile(r"[0-9][0-9 ().+/-]{5,}[0-9]", _A)


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
        doc.text, doc.metadata["pii"] = self.scrub(doc.text, doc.metadata.get("language"))
        return doc

    def scrub(self, text: str, language: str | None = None) -> tuple[str, dict[str, int]]:
        """Return the text with placeholders and {type: count} for the types found (no zeros).
        language (the language stage's code) picks the regions phone numbers are read for."""
        found = self.find(text, language)
        if not found:
            return text, {}
        pieces, pos = [], 0
        for s, e, t in found:
            pieces += (text[pos:s], PLACEHOLDERS[t])
            pos = e
        pieces.append(text[pos:])
        return "".join(pieces), dict(Counter(t for _, _, t in found))

    def find(self, text: str, language: str | None = None) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, type) finds, sorted by start; earlier types win overlaps."""
        starts: list[int] = []
        kept: list[tuple[int, int, str]] = []
        runs = [m.span() for m in _NUM_RUN.finditer(text)]
        for t in self.types:
            for s, e in self._detect(t, text, runs, language):
                i = bisect_right(starts, s)
                if (i and kept[i - 1][1] > s) or (i < len(kept) and kept[i][0] < e):
                    continue  # overlaps a find of a higher-priority type
                starts.insert(i, s)
                kept.insert(i, (s, e, t))
        return kept

    def _detect(self, t: str, text: str, runs: list[Span], language: str | None) -> Iterator[Span]:
        if t == "phone":
            # '+' and '(' before the digits, an extension ("ext. 6021") after them.
            windows = _merge([m.span() for m in _PHONE_RUN.finditer(text)], len(text), 2, 16)
            regions = regions_for(language)
            for lo, hi in windows:
                yield from find_phones(text, regions, lo, hi)
        elif t == "secret":
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
