"""Phone numbers for the PII stage: candidates by shape, look-alikes refused, the rest checked with
Google's libphonenumber (the `phonenumbers` port) for the regions the document's language suggests.

    find_phones("Ruf an: 030 1234567 oder +44 20 7946 0958", regions=("DE", "AT", "CH"))  # two spans

A candidate is a run of digits with the separators phone numbers use (space, '-', '.', '/',
parentheses), an optional leading '+' and an optional extension ("x5917", "ext. 6021", "#12"),
which is scrubbed with the number. After the look-alike checks below it is a phone when:
- it has 8+ digits and libphonenumber parses it as a possible number (its per-region length
  rules) of one of the document's likely regions, or, with a leading '+', of the country it names;
- or it has a phone's layout by itself (a leading '+', '(' or trunk '0', 8 to 15 digits in
  groups), or a phone word right before it ("tel", "phone", "fax", "call", "Telefon", "電話", ...).
  Outside generators (and people) write random digits in real layouts, and many are not numbers a
  network ever assigned: libphonenumber's VALID check alone misses most of them;
- a bare run of digits (no separator) only with a phone word before it, or when it has 9+ digits,
  is not a value in code ('=', '@', '[', quotes), and is VALID (assigned) in the document's first
  region or starts with a trunk prefix of one of its regions and is possible there;
- a row of small groups ("189 101 84 38") only when VALID in the document's first region
  ("32 851 87 62" in Polish).
Look-alikes kept: dates (2023-10-05, 05.10.2023, 10/05/2023) with or beside a time, year and number
ranges, lists ("821/850/860"), ZIP+4 codes, SSN layouts, decimals, dotted versions, dotted quads
(IPv4 is the IP detector's), coordinates, ISBN-10/13 and EAN-13 (checksums by python-stdnum), hex
dumps and filler ("00000000", "0 1 1 1"), powers of two (2147483647), numbers after '#', "order",
"invoice", "ISBN", "page", "id"..., and anything glued to a word or a longer number.
The measured trade-off (recall on Faker text in 12 locales, finds on this machine's man pages) is
in the README; `pretrain data score-pii` reproduces the first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import phonenumbers
from stdnum import ean, isbn

Span = tuple[int, int]
_A = re.ASCII

# Regions to try per document language (ISO 639-1 from the language stage), most likely first.
# Unknown or missing language: the fallback list, which covers the largest numbering plans.
LANGUAGE_REGIONS: dict[str, tuple[str, ...]] = {
    "en": ("US", "GB", "AU", "CA", "IN", "IE", "NZ", "ZA", "PH", "NG", "SG"),
    "de": ("DE", "AT", "CH", "LI", "LU"),
    "fr": ("FR", "BE", "CH", "CA", "LU", "MA", "SN", "CI"),
    "es": ("ES", "MX", "AR", "CO", "CL", "PE", "VE", "US"),
    "pt": ("BR", "PT", "AO", "MZ"),
    "it": ("IT", "CH", "SM"),
    "nl": ("NL", "BE", "SR"),
    "pl": ("PL",),
    "ru": ("RU", "BY", "KZ", "UA"),
    "uk": ("UA",),
    "cs": ("CZ",),
    "sk": ("SK",),
    "sv": ("SE", "FI"),
    "da": ("DK",),
    "no": ("NO",),
    "nb": ("NO",),
    "fi": ("FI",),
    "el": ("GR", "CY"),
    "tr": ("TR",),
    "hu": ("HU",),
    "ro": ("RO", "MD"),
    "bg": ("BG",),
    "hr": ("HR",),
    "ja": ("JP",),
    "zh": ("CN", "TW", "HK", "SG"),
    "ko": ("KR",),
    "hi": ("IN",),
    "bn": ("BD", "IN"),
    "ar": ("SA", "EG", "AE", "MA", "DZ", "IQ", "JO"),
    "he": ("IL",),
    "fa": ("IR",),
    "th": ("TH",),
    "vi": ("VN",),
    "id": ("ID",),
    "ms": ("MY",),
}
FALLBACK_REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "CN", "JP")

# digits and phone separators, optional '+' and extension; at least 7 digits overall (checked below)
_CANDIDATE = re.compile(
    r"(?P<num>(?:\+|\(\+?)?[0-9](?:[0-9]|[ .\-/]{1,2}(?=[0-9(])|\(|\)[ .\-/]?){5,30}[0-9])"
    r"(?P<ext>[ ]?(?:x|ext\.?|extension|#)[ ]?[0-9]{1,6})?(?![0-9A-Za-z])",
    _A | re.I,
)
_DATE = re.compile(
    r"(?:[0-9]{4}(?P<s1>[-./])[0-9]{1,2}(?P=s1)[0-9]{1,2}|[0-9]{1,2}(?P<s2>[-./])[0-9]{1,2}(?P=s2)(?:[0-9]{4}|[0-9]{2}))",
    _A,
)
_POWERS_OF_TWO = frozenset(v for k in range(16, 65) for v in (2**k - 1, 2**k))
_ZIP4 = re.compile(r"[0-9]{5}-[0-9]{4}", _A)
_SSN_LAYOUT = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", _A)
_YEAR_RANGE = re.compile(r"(1[0-9]|20)[0-9]{2} ?[-/] ?(1[0-9]|20)[0-9]{2}", _A)
_PHONE_WORDS = re.compile(
    r"(?:\b(?:tel|tél|phone|telephone|téléphone|telefon|telefono|teléfono|telefone|fax|mobile|mobil|cell|call|"
    r"ring|whatsapp|contact|kontakt|contacto|contato|contatto|hotline|handy|portable|celular|móvil|movil|"
    r"numer|número|numero|nummer|reach|dial|text|sms|тел|телефон|звоните)|電話|携帯|电话|手机|전화|연락처)\.?"
    r"(?:\s*(?:no\.?|nr\.?|number|n°|#))?\s*[:.]?(?:\s+[^\W\d]{1,8}){0,4}\s*$",
    re.I,
)
_NOT_PHONE_WORDS = re.compile(
    r"(?:#|\b(?:no|nr|order|invoice|ref|reference|isbn|issn|ean|upc|sku|page|pages|pp|p|id|"
    r"account|acct|ticket|case|serial|part|item|version|ver|v|build|patent|doi|zip|postcode|"
    r"code|lot|batch|room|flight)\b\.?)\s*[:#]?\s*$",
    re.I,
)


def regions_for(language: str | None) -> tuple[str, ...]:
    """Likely regions of a document in `language` (ISO 639-1 or a py3langid/fastText code)."""
    if not language:
        return FALLBACK_REGIONS
    return LANGUAGE_REGIONS.get(language.split("_")[0].split("-")[0].lower(), FALLBACK_REGIONS)


def _lookalike(num: str, before: str) -> bool:
    if _NOT_PHONE_WORDS.search(before):
        return True
    date = _DATE.search(num)
    if (
        (
            date
            and num[date.end() : date.end() + 1] in ("", " ")
            and num[date.start() - 1 : date.start()] in ("", " ")
        )
        or _YEAR_RANGE.fullmatch(num)
        or _SSN_LAYOUT.fullmatch(num)
    ):
        return True  # a date (maybe with a time or a section number beside it), years, the SSN layout
    digits = sum(c.isdigit() for c in num)
    only = re.sub(r"[^0-9]", "", num)
    groups = [g for g in re.split(r"[^0-9]+", num) if g]
    if int(only) in _POWERS_OF_TWO:
        return True  # 2147483647, 4294967296, 1048576: limits and sizes in code and docs
    if len(set(only)) <= 2 or only in "01234567890123456789" or (len(groups) >= 3 and len(set(groups)) == 1):
        return True  # "00000000", "1010 1001", "0123456789", "377 377 377 377": filler, not a number
    if (
        len(groups) >= 3
        and num[0] not in "+(0"
        and len({len(g) for g in groups}) == 1
        and len(groups[0]) >= 4
    ):
        return True  # "3500 3000 2500": a list of equal-width numbers
    if re.search(r" -|- |  ", num):
        return True  # "2007 -0800" (a year and a time zone), "100  100  160" (a table's columns)
    if len(groups) >= 2 and all(re.fullmatch(r"(?:1[5-9]|20)[0-9]{2}", g) for g in groups):
        return True  # "2009 2011": years
    if re.match(r"0[ .\-/]", num) and len(groups) < 4:
        return True  # "0 2056320": a zero and a number ("0 675 945 992" is Thai, four groups)
    if groups.count("00") > 1 or sum(len(g) == 1 for g in groups) >= 3:
        return True  # a hex dump ("00 25 00 27 00"), single digits in a row ("0 1 1 1 2 3")
    if len(groups) == 2 and num[0] not in "+(0" and len(groups[0]) >= 4 and int(groups[0]) < int(groups[1]):
        return True  # a range: "1000-3000", "16384-32768", "6000/8000"

    if digits > 12 and not num.startswith(("+", "00", "(+", "(00")):
        return True  # longer than any national number: a count, an id, a timestamp
    if num.count("/") > 1 or _ZIP4.fullmatch(num):
        return True  # a list ("821/850/860", "20/30/600/150"), a US ZIP+4 code ("02110-1301")
    if "." in num and num.count(".") < 2:
        return True  # "1935.000" is a decimal; dotted phones have three groups or more
    if "." in num and not num.startswith("+"):
        groups = re.split(r"[ .\-/()]+", num.strip("()+ "))
        # versions ("5.9.97.1033") and coordinates ("48.8566123"): a lone digit or a long decimal part
        if any(len(g) == 1 or len(g) >= 5 for g in groups[1:]):
            return True
        if len(groups) == 4 and "." in num and all(len(g) <= 3 and int(g) <= 255 for g in groups):
            return True  # a dotted quad is an IPv4 address (the IP detector's business)
    groups = num.split("-")
    if len(groups) >= 4 and len(groups[-1]) == 1 and isbn.is_valid(num):
        return True  # a hyphenated ISBN-10/13: its check digit stands alone at the end
    if digits == 13 and num.isdigit() and ean.is_valid(num):
        return True  # a bare EAN-13 barcode (checksum)
    return False


def _small_groups(num: str, regions: Sequence[str]) -> bool:
    """Small numbers in a row ("189 101 84 38"), unless a trunk-prefixed or international form
    ("8 604 876 47 59" in Russian)."""
    groups = [g for g in re.split(r"[^0-9]+", num) if g]
    trunk8 = re.match(r"8[ (-]", num) is not None and regions[0] in ("RU", "BY", "KZ", "UA")
    return num[0] not in "+(0" and not trunk8 and any(len(g) <= 2 for g in groups[1:-1])


def _possible(num: str, regions: Sequence[str], valid: bool = False, trunk: bool = False) -> bool:
    """libphonenumber parses num as a possible (or, with valid, an assigned) number of one of the
    regions; a leading '+' names its own country. trunk: only regions whose national (trunk) prefix
    num starts with ("8 495 …" in Russia, "0…" in most of Europe)."""
    pn = phonenumbers
    check = pn.is_valid_number if valid else pn.is_possible_number
    for region in (None,) if num.startswith("+") else regions:
        if trunk:  # not "1" (NANP): "1465981137" is a timestamp far more often than a US number
            prefix = getattr(pn.PhoneMetadata.metadata_for_region(region), "national_prefix", None)
            if not prefix or prefix == "1" or not num.startswith(prefix):
                continue
        try:
            parsed = pn.parse(num, region)
        except pn.NumberParseException:
            continue
        if check(parsed):
            return True
    return False


def _shaped(num: str, before: str) -> bool:
    """A phone by layout or by the word before it, whatever libphonenumber's tables say."""
    digits = sum(c.isdigit() for c in num)
    if _PHONE_WORDS.search(before) and 7 <= digits <= 15:
        return True
    grouped = bool(re.search(r"[0-9][ .\-/()]+[0-9]", num))
    lone_trunk = re.match(r"0[ .\-/]", num) is not None and len(re.findall(r"[0-9]+", num)) < 4  # "0 2097152"
    return grouped and num[0] in "+(0" and 8 <= digits <= 15 and not lone_trunk


def find_phones(
    text: str, regions: Sequence[str] = FALLBACK_REGIONS, lo: int = 0, hi: int | None = None
) -> Iterator[Span]:
    """Spans of phone numbers (with their extension) in text[lo:hi]."""
    hi = len(text) if hi is None else hi
    pos = lo
    while (m := _CANDIDATE.search(text, pos, hi)) is not None:
        pos = m.end()
        s = m.start()
        if (
            s
            and (
                text[s - 1].isalnum()
                or text[s - 1] in "_.-/+\\"
                or (  # "08:02 135870", "fd:03 960637", but "tel:+1…"
                    text[s - 1] == ":"
                    and s > 1
                    and text[s - 2].isalnum()
                    and not _PHONE_WORDS.search(text[max(0, s - 24) : s])
                )
                or (
                    text[s - 1] in ", "
                    and s > 1
                    and text[s - 2].isdigit()
                    and (text[s - 1] == "," or text[s] == "+")
                )
            )
        ):
            continue  # glued to a word or a longer number ("v1.2", "-82.39", "1,234"), or a sum ("5 +10")
        num, end = m["num"], m.end()
        last_open = num.rfind("(")
        if last_open > 0 and ")" not in num[last_open:]:  # an opening bracket after it: "… (9-17h)"
            num, end = num[:last_open].rstrip(" .-/"), None
        if num.startswith("(") and num.count("(") > num.count(")"):  # "(555-123-4567)": the text's
            num = num[1:]
            s += 1
        if not num:
            continue
        digits = sum(c.isdigit() for c in num)
        if not 7 <= digits <= 15 or num.count("(") != num.count(")"):
            continue
        before, after = text[max(0, s - 24) : s], text[s + len(num) : s + len(num) + 2]
        if _lookalike(num, before) or re.match(r"[-.][0-9A-Za-z]|,[0-9]|:[0-9]|\\", after):
            continue  # part of a longer token: a UUID's first group, an ISBN-10 "…-X", "1 234 567,89"
        if not re.search(r"[ .\-/()]", num) and num[0] != "+" and not _PHONE_WORDS.search(before):
            # A bare run of digits is a count, an id, a size or an amount as often as a phone: only
            # one of 9+ digits, in prose (not a value after '=', '@', '[', a quote, '$', or ':' unless it
            # starts with a trunk 0), that
            # libphonenumber knows as assigned in the document's first region, or that starts with
            # the trunk prefix of one of its regions ("0590354712" in France) and is possible there.
            if (
                digits >= 9
                and not re.search(r"[=@'\"$`(\[]\s*$" if num[0] == "0" else r"[=@'\"$`:(\[]\s*$", before)
                and (_possible(num, regions[:1], valid=True) or _possible(num, regions, trunk=True))
            ):
                yield s, s + len(num)
            continue
        if _small_groups(num, regions) and not _PHONE_WORDS.search(before):
            # "32 851 87 62" is a Polish number, "189 101 84 38" four counts: only an assigned
            # number of the document's own region passes
            if _possible(num, regions[:1], valid=True):
                yield s, s + len(num)
            continue
        if (digits >= 8 and _possible(num, regions)) or _shaped(num, before):
            yield s, (end if m["ext"] and end is not None else s + len(num))
