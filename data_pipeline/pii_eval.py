"""Score the PII stage on text with planted truth, and make such text with an outside generator.

    rows = make_pii_set(["en_US", "de_DE", "ja_JP"], per_type=200, seed=0)   # needs `faker`
    table = score_pii(rows)    # {type: {"planted", "found", "recall"}, "lookalike": {... "kept"}}
    pretrain data make-pii-set --out pii.jsonl --locales en_US,de_DE,ja_JP
    pretrain data score-pii --input pii.jsonl

A row of the JSONL: {"text": str, "language": str | null, "planted": [{"type", "value"}],
"lookalikes": [str]}. A planted value counts as found when it no longer appears in the scrubbed
text and its type's placeholder does; a look-alike counts as kept when it is still there, byte for
byte. The generated set writes each value the way Faker's locale writes it, inside one of a few
sentence templates; look-alikes are dates, times, versions, ISBNs, EANs, UUIDs, hashes, prices,
coordinates, order and invoice numbers, year and page ranges.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import uuid
from collections import defaultdict
from typing import Any

from data_pipeline.stages.pii import PLACEHOLDERS, PIIConfig

TEMPLATES = (
    "Call me at {} tomorrow.",
    "Tel.: {}",
    "Details: {} (office hours 9-17).",
    "You can reach the front desk on {}.",
    "Kontakt: {} oder per Mail.",
    "Anna Schmidt, {}, Berlin",
    "Questions? {} (9-17h).",
)
# Europe, Asia and the Americas; phone formats, alphabets and IBAN countries differ between them.
DEFAULT_PII_LOCALES = (
    "en_US",
    "es_MX",
    "pt_BR",
    "en_GB",
    "de_DE",
    "fr_FR",
    "it_IT",
    "pl_PL",
    "ja_JP",
    "ko_KR",
    "hi_IN",
    "zh_TW",
)
CARD_TYPES = (
    "visa16",
    "visa13",
    "visa19",
    "mastercard",
    "amex",
    "discover",
    "diners",
    "jcb15",
    "jcb16",
    "maestro",
)


def _exempt_ip(value: str) -> bool:
    """Addresses the stage keeps by policy (private, loopback, link-local, multicast, unspecified,
    IPv6 site-local): they are nobody's, so they are no positives."""
    ip = ipaddress.ip_address(value)
    site_local = ip.version == 6 and ip.is_site_local
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or site_local
    )


def _lookalikes(rnd: random.Random, fake: Any) -> list[str]:
    d = fake.date_object()
    return [
        d.isoformat(), d.strftime("%d/%m/%Y"), d.strftime("%d.%m.%Y"), fake.time(),
        f"version {rnd.randint(1, 20)}.{rnd.randint(0, 9)}.{rnd.randint(0, 99)}.{rnd.randint(0, 9999)}",
        fake.isbn13(), fake.isbn10(), fake.ean13(), str(uuid.UUID(int=rnd.getrandbits(128))),
        hashlib.sha1(str(rnd.random()).encode()).hexdigest()[: rnd.choice((12, 40))],
        f"${rnd.randint(1000, 999999):,}.{rnd.randint(0, 99):02d}", f"{fake.latitude()}, {fake.longitude()}",
        f"Order #{rnd.randint(10**7, 10**9)}", f"Invoice no. {rnd.randint(10**7, 10**10)}",
        f"{rnd.randint(1900, 2000)}-{rnd.randint(2001, 2030)}", f"pages {rnd.randint(100, 999)}-{rnd.randint(1000, 1999)}",
        f"{rnd.randint(10, 23)}:{rnd.randint(10, 59)}:{rnd.randint(10, 59)}", fake.credit_card_expire(),
    ]  # fmt: skip


def make_pii_set(locales: list[str], per_type: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of text with PII written by Faker in each locale (phone, email, IPv4, IPv6, card, IBAN,
    US SSN for en_US), one planted value per row, plus rows of look-alikes."""
    try:
        from faker import Faker  # heavy optional library (the dev extra): only for making the set
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("making a PII set needs Faker: pip install faker (in the dev extra)") from e
    rows: list[dict[str, Any]] = []
    for li, locale in enumerate(locales):
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + li)
        rnd = random.Random(seed * 1000 + li)
        language = locale.split("_")[0]
        makers = {
            "phone": fake.phone_number,
            "email": fake.email,
            "ip_address": lambda f=fake, r=rnd: f.ipv4_public() if r.random() < 0.5 else f.ipv6(),
            "credit_card": lambda f=fake, r=rnd: f.credit_card_number(card_type=r.choice(CARD_TYPES)),
        }
        if hasattr(fake, "iban") and fake.iban()[:2] == locale.split("_")[-1]:
            makers["iban"] = fake.iban  # only where Faker writes this locale's own IBANs
        if locale == "en_US":
            makers["ssn"] = fake.ssn
        for kind, make in makers.items():
            for k in range(per_type):
                value = make()
                if kind == "ip_address" and _exempt_ip(value):
                    continue
                text = TEMPLATES[(k + li) % len(TEMPLATES)].format(value)
                rows.append({"text": text, "language": language, "locale": locale,
                             "planted": [{"type": kind, "value": value}], "lookalikes": []})  # fmt: skip
        for _ in range(max(1, per_type // 10)):
            values = _lookalikes(rnd, fake)
            text = " ".join(f"Item {i}: {v}." for i, v in enumerate(values))
            rows.append(
                {"text": text, "language": language, "locale": locale, "planted": [], "lookalikes": values}
            )
    return rows


def score_pii(rows: list[dict[str, Any]], cfg: PIIConfig | None = None) -> dict[str, dict[str, Any]]:
    """Recall per planted type and the share of look-alikes kept, after the PII stage's scrub."""
    scrubber = (cfg or PIIConfig()).build()
    planted: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    misses: dict[str, list[str]] = defaultdict(list)
    looks = kept = 0
    lost: list[str] = []
    for row in rows:
        out, _ = scrubber.scrub(row["text"], row.get("language"))
        for p in row.get("planted", []):
            planted[p["type"]] += 1
            if p["value"] not in out and PLACEHOLDERS[p["type"]] in out:
                found[p["type"]] += 1
            elif len(misses[p["type"]]) < 5:
                misses[p["type"]].append(p["value"])
        for v in row.get("lookalikes", []):
            looks += 1
            if v in out:
                kept += 1
            elif len(lost) < 5:
                lost.append(v)
    table: dict[str, dict[str, Any]] = {
        t: {"planted": planted[t], "found": found[t], "recall": found[t] / planted[t], "misses": misses[t]}
        for t in sorted(planted)
    }
    table["lookalike"] = {
        "planted": looks,
        "kept": kept,
        "kept_rate": kept / looks if looks else 1.0,
        "lost": lost,
    }
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'type':14s} {'planted':>8s} {'found':>8s} {'recall':>8s}  examples missed"]
    for t, r in table.items():
        if t == "lookalike":
            continue
        lines.append(f"{t:14s} {r['planted']:8d} {r['found']:8d} {r['recall']:8.3f}  {r['misses'][:3]}")
    r = table["lookalike"]
    lines.append(
        f"{'look-alikes':14s} {r['planted']:8d} {r['kept']:8d} {r['kept_rate']:8.3f}  (kept) {r['lost'][:3]}"
    )
    return "\n".join(lines)
