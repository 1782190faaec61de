"""Watermark text: the content kinds (shop names, handles, phones, URLs, e-mail) and :func:`sample_text`.

Word lists are shared with the logo badges (:mod:`train.synth.badges`) and the scene-text
designs (:mod:`train.synth.scene_design`).
"""

from __future__ import annotations

import random

SCRIPTS = ("latin", "persian")

PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
FA_SHOP_WORDS = (
    "فروشگاه", "گالری", "مزون", "بوتیک", "خانه", "دنیای", "پوشاک", "لوازم خانگی", "دکوراسیون",
    "مبلمان", "آرایشی", "عطر", "کیف و کفش", "تولیدی", "پخش", "جواهری", "ساعت", "کالای خواب",
    "سیسمونی", "اکسسوری", "شال و روسری", "چرم",
)  # fmt: skip
FA_NAMES = (
    "آرا", "نیلوفر", "پارسا", "رز", "مهسا", "آوا", "ستاره", "الماس", "نگین", "سپید", "بهار",
    "پرنیان", "ماهان", "کیان", "ترمه", "شیدا", "یاس", "سارینا", "آریا", "پرستو", "مهرگان", "تینا",
    "دلارام", "گلستان", "نقش جهان", "پردیس", "آسمان", "ژینا", "چکاوک", "مروارید", "افرا",
)  # fmt: skip
FA_TAGLINES = (
    "ارسال به سراسر کشور", "خرید آنلاین", "فروش عمده و تک", "کیفیت برتر", "تخفیف ویژه",
    "تضمین اصالت کالا", "ارسال رایگان", "سفارش در دایرکت", "تولید و پخش",
)  # fmt: skip
_FA_HANDLE_LABELS = ("اینستاگرام:", "آیدی تلگرام:", "پیج ما:", "کانال تلگرام:", "آیدی:", "ما را دنبال کنید")
_FA_PHONE_LABELS = ("تماس:", "تلفن:", "واتساپ:", "سفارش:", "")
LATIN_NAMES = (
    "negin", "arya", "parsa", "rose", "mahsa", "ava", "setareh", "almas", "bahar", "kian", "termeh",
    "yas", "sarina", "niloofar", "mahan", "shida", "donya", "tara", "atlas", "persia", "parmis",
    "avin", "helia", "raha", "baran", "sepid", "mehr", "nika", "diba", "kimia",
)  # fmt: skip
LATIN_SHOP_WORDS = (
    "shop", "gallery", "store", "mezon", "boutique", "decor", "home", "style", "collection", "mode",
    "design", "market", "lux",
)  # fmt: skip
_LATIN_LABELS = ("Instagram:", "IG:", "Telegram:", "ID:", "Follow", "Tel:", "Call:", "WhatsApp:")
_MOBILE_PREFIXES = (
    "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "01", "02", "03", "05", "30", "33",
    "35", "36", "37", "38", "39", "90", "91", "92", "93", "94", "98", "99",
)  # fmt: skip
_MAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "chmail.ir", "mail.ir")

TEXT_KINDS = (
    "persian_shop",  # فروشگاه نگین
    "latin_shop",  # NEGIN GALLERY
    "handle",  # @negin.shop
    "mixed_handle",  # اینستاگرام: @negin.shop
    "phone_fa",  # تماس: ۰۹۱۲ ۳۴۵ ۶۷۸۹
    "phone_latin",  # 0912-345-6789
    "url",  # www.negin.ir, t.me/negin_shop
    "two_line",  # shop name over a handle / phone / tagline
    "email",  # negin.shop@gmail.com
)
LATIN_ONLY_KINDS = ("latin_shop", "handle", "phone_latin", "url")
# Latin kind used instead of a Persian one when no Persian font can be used.
LATIN_STAND_IN = {
    "persian_shop": "latin_shop", "mixed_handle": "handle", "phone_fa": "phone_latin", "two_line": "latin_shop",
}  # fmt: skip


def _ltr(text: str, rng: random.Random) -> str:
    """Isolate a left-to-right run inside Persian text (left raw now and then, as in real uploads)."""
    return f"\u2066{text}\u2069" if rng.random() < 0.8 else text


def latin_slug(rng: random.Random) -> str:
    """A shop-like Latin slug: name and shop word joined, or a name with a suffix."""
    name = rng.choice(LATIN_NAMES)
    word = rng.choice(LATIN_SHOP_WORDS)
    sep = rng.choice((".", "_", "", "."))
    slug = rng.choice((f"{name}{sep}{word}", f"{word}{sep}{name}", name + rng.choice(("", "98", "_official", "1400"))))
    return slug


def _phone_digits(rng: random.Random) -> str:
    """An Iranian mobile (usually) or landline number in one of the usual spellings."""
    if rng.random() < 0.85:
        rest = "".join(str(rng.randrange(10)) for _ in range(7))
        digits = "09" + rng.choice(_MOBILE_PREFIXES) + rest  # 11 digits, 09xx xxx xxxx
        style = rng.randrange(5)
        if style == 0:
            return digits
        if style == 1:
            return f"{digits[:4]} {digits[4:7]} {digits[7:]}"
        if style == 2:
            return f"{digits[:4]}-{digits[4:7]}-{digits[7:]}"
        if style == 3:
            return f"+98 {digits[1:4]} {digits[4:7]} {digits[7:]}"
        return f"{digits[:4]} {digits[4:]}"
    area = rng.choice(("021", "031", "051", "071", "041", "026"))
    return f"{area}-{''.join(str(rng.randrange(10)) for _ in range(8))}"


def make_text(kind: str, rng: random.Random) -> str:
    """The text of one watermark of ``kind`` (see :data:`TEXT_KINDS`)."""
    if kind == "persian_shop":
        text = f"{rng.choice(FA_SHOP_WORDS)} {rng.choice(FA_NAMES)}"
        return text if rng.random() < 0.85 else f"{text} {rng.choice(('شیک', 'لوکس', 'آنلاین', 'مرکزی', 'اصل'))}"
    if kind == "latin_shop":
        text = f"{rng.choice(LATIN_NAMES).capitalize()} {rng.choice(LATIN_SHOP_WORDS).capitalize()}"
        roll = rng.random()
        if roll < 0.35:
            return text.upper()
        if roll < 0.5:
            return f"© {text}"
        return text
    if kind == "handle":
        return "@" + latin_slug(rng)
    if kind == "mixed_handle":
        handle = "@" + latin_slug(rng)
        if rng.random() < 0.75:
            return f"{rng.choice(_FA_HANDLE_LABELS)} {_ltr(handle, rng)}"
        return f"{rng.choice(_LATIN_LABELS)} {handle}"
    if kind == "phone_fa":
        label = rng.choice(_FA_PHONE_LABELS)
        number = _phone_digits(rng).translate(PERSIAN_DIGITS)
        return f"{label} {_ltr(number, rng)}" if label else number
    if kind == "phone_latin":
        number = _phone_digits(rng)
        return f"{rng.choice(('', '', 'Tel: ', 'Call ', 'WhatsApp '))}{number}"
    if kind == "url":
        slug = latin_slug(rng).replace("_", "-").replace(".", "-")
        handle = latin_slug(rng)
        return rng.choice(
            (
                f"www.{slug}.ir",
                f"{slug}.ir",
                f"www.{slug}.com",
                f"{slug}.shop",
                f"t.me/{handle}",
                f"instagram.com/{handle}",
                f"https://{slug}.ir",
            )
        )
    if kind == "two_line":
        first = make_text(rng.choice(("persian_shop", "latin_shop")), rng)
        second = make_text(rng.choice(("handle", "mixed_handle", "phone_fa", "phone_latin", "url")), rng)
        if is_persian(first) and rng.random() < 0.3:
            second = rng.choice(FA_TAGLINES)
        return f"{first}\n{second}"
    if kind == "email":
        return f"{latin_slug(rng).replace('_', '.')}@{rng.choice(_MAIL_DOMAINS)}"
    raise ValueError(f"text kind={kind!r}: allowed are {', '.join(TEXT_KINDS)}")


def sample_text(rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """Draw the content of a watermark.

    Args:
        rng: source of randomness.
        kind: one of :data:`TEXT_KINDS`, or None for a uniform choice.

    Returns:
        ``(kind, text)``; ``text`` may hold a newline (``two_line``).

    Raises:
        ValueError: ``kind`` is not in :data:`TEXT_KINDS`.
    """
    if kind is None:
        kind = rng.choice(TEXT_KINDS)
    elif kind not in TEXT_KINDS:
        raise ValueError(f"text kind={kind!r}: allowed are {', '.join(TEXT_KINDS)}")
    return kind, make_text(kind, rng)


def is_persian(text: str) -> bool:
    """True when ``text`` holds Arabic-script letters."""
    return any("\u0600" <= ch <= "\u06ff" or "\ufb50" <= ch <= "\ufeff" for ch in text)
