"""PII cases: base documents with planted emails, IPs, phones, cards, IBANs, SSNs and secrets
(the truth lists each value and the counts per type), and hard negatives: values that look like
PII but are not, which the scrubber must leave in place.
"""

from __future__ import annotations

import base64
import random
from collections import Counter
from typing import Any

from data_pipeline.corpus.assets import pairs, string_lists, strings
from data_pipeline.corpus.planted import Builder, insert_sentences

NUM_PII = 28
NUM_PII_HARD_NEGATIVE = 15
PII_TYPES = ("email", "ip_address", "phone", "credit_card", "iban", "ssn", "secret")

_PII_TEMPLATES = string_lists("pii_templates")
_PUBLIC_IPS = strings("public_ips")
_INTL_PHONES = strings("intl_phones")
_TEST_CARDS = strings("test_cards")  # Luhn-valid test numbers: Visa, Mastercard, Amex
_IBANS = strings("ibans")
_EMAIL_USERS = strings("email_users")
_EMAIL_DOMAINS = strings("email_domains")
HARD_NEGATIVES = pairs("hard_negatives")  # (value that is no PII, sentence template)


def luhn_ok(number: str) -> bool:
    """The card number's Luhn check digit is right."""
    digits = [int(c) for c in reversed(number)]
    return sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0


def iban_ok(iban: str) -> bool:
    """The IBAN (without spaces) passes its mod-97 check."""
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _grouped(value: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(value[start : start + size])
        start += size
    return sep.join(p for p in parts if p)


def _pii_value(kind: str, i: int, rng: random.Random) -> str:
    """The i-th value of a PII type; i cycles through the formats so each one appears."""
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    if kind == "email":
        return f"{_EMAIL_USERS[i % len(_EMAIL_USERS)]}@{rng.choice(_EMAIL_DOMAINS)}"
    if kind == "ip_address":
        return _PUBLIC_IPS[i % len(_PUBLIC_IPS)]
    if kind == "phone":
        area, line = rng.choice((415, 212, 312, 617, 206, 303, 512, 646)), rng.randint(1000, 9999)
        nanp = (f"({area}) 555-{line}", f"{area}-555-{line}", f"+1 {area} 555 {line}")
        return nanp[i % 4] if i % 4 < 3 else _INTL_PHONES[(i // 4) % len(_INTL_PHONES)]
    if kind == "credit_card":
        number = _TEST_CARDS[i % len(_TEST_CARDS)]
        assert luhn_ok(number), number
        sizes = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
        return _grouped(number, sizes, (" ", "-", "")[i % 3])
    if kind == "iban":
        iban = _IBANS[i % len(_IBANS)]
        assert iban_ok(iban), iban
        return _grouped(iban, (4,) * 9, " ") if i % 2 == 0 else iban
    if kind == "ssn":
        area = rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "secret":
        flavour = i % 5
        if flavour == 0:
            return "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        if flavour == 1:
            return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
        if flavour == 2:
            digits = "".join(rng.choice("0123456789") for _ in range(25))
            tail = "".join(rng.choice(alnum) for _ in range(24))
            return f"xoxb-{digits[:12]}-{digits[12:]}-{tail}"
        if flavour == 3:
            return "AIza" + "".join(rng.choice(alnum + "-_") for _ in range(35))
        body = base64.b64encode(rng.randbytes(96)).decode()
        return f"-----BEGIN RSA PRIVATE KEY----- {body[:64]} {body[64:]} -----END RSA PRIVATE KEY-----"
    raise ValueError(f"unknown PII type {kind!r}; expected one of {PII_TYPES}")


def _pii_sentence(kind: str, value: str, rng: random.Random) -> str:
    if value.startswith("-----BEGIN"):
        return f"The old deploy script contained the private key {value} in plain text."
    return rng.choice(_PII_TEMPLATES[kind]).format(value)


def _inserting(sentences: list[str], extra: dict[str, Any], rng: random.Random) -> Any:
    def edit(text: str) -> tuple[str, dict[str, Any], str]:
        new = insert_sentences(text, sentences, rng)
        return new, extra, new

    return edit


def plant_pii(b: Builder) -> None:
    """NUM_PII documents with 1-3 PII values each (every third also with a hard negative), then
    NUM_PII_HARD_NEGATIVE documents with hard negatives only."""
    rng = b.rng
    kinds_pool = [k for k in PII_TYPES for _ in range(8)]  # 55 values over 28 documents: 7+ per type
    rng.shuffle(kinds_pool)
    value_index: Counter[str] = Counter()
    negatives = rng.sample(HARD_NEGATIVES, len(HARD_NEGATIVES))
    for i in range(NUM_PII):
        kinds = [kinds_pool.pop() for _ in range(1 + i % 3)]
        values = []
        for kind in kinds:
            values.append((kind, _pii_value(kind, value_index[kind], rng)))
            value_index[kind] += 1
        sentences = [_pii_sentence(k, v, rng) for k, v in values]
        hard = [negatives[i % len(negatives)]] if i % 3 == 0 else []
        sentences += [template.format(v) for v, template in hard]
        extra = {
            "pii": dict(sorted(Counter(kinds).items())),
            "pii_values": [[k, v] for k, v in values],
            "hard_negatives": [v for v, _ in hard],
        }
        b.modified("pii", _inserting(sentences, extra, rng))
    for i in range(NUM_PII_HARD_NEGATIVE):
        hard = [negatives[(i * 3 + j) % len(negatives)] for j in range(1 + i % 3)]
        sentences = [template.format(v) for v, template in hard]
        extra = {"pii": {}, "pii_values": [], "hard_negatives": [v for v, _ in hard]}
        b.modified("pii_hard_negative", _inserting(sentences, extra, rng))
