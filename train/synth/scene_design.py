"""Scene-text designs (hard negatives): product label, price tag, box face and print on the object.

Each design is drawn flat, at a fixed size, with fitted text lines (:class:`Writer`);
:mod:`train.synth.scene_text` warps, places and lights it on the photo.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

from PIL import Image, ImageDraw

from train.synth.compose import luma
from train.synth.fonts import font_for
from train.synth.geometry import fit_font, paint, plain_mask
from train.synth.style import weighted
from train.synth.text import PERSIAN_DIGITS, is_persian

_BRAND_SYLLABLES = ("va", "ro", "mi", "sa", "ne", "ka", "lu", "do", "ze", "ta", "pa", "ri", "bo", "fa", "li", "no")
_BRAND_ENDINGS = ("na", "ro", "lix", "ta", "vo", "sa", "nex", "mo", "line", "ra", "lia", "tis", "ko")
_FA_BRANDS = (
    "مهرآوا", "گلسار", "آذرین", "سپیدار", "کیمیا", "تارا", "پرنیان", "نیکان", "آفتاب", "رویا", "البرز", "ماهور",
    "نوشین", "باران", "زرین", "نگین", "آوا",
)  # fmt: skip
_FA_PRODUCTS = (
    "چای سیاه", "روغن زیتون", "عسل طبیعی", "شامپو", "کرم مرطوب کننده", "قهوه", "زعفران", "پنیر", "ماکارونی",
    "برنج ایرانی", "آب معدنی", "مایع ظرفشویی", "دستمال کاغذی", "رب گوجه فرنگی", "شکلات تلخ", "بیسکویت",
    "ادویه کاری", "کنسرو ماهی", "خمیر دندان", "نوشابه",
)  # fmt: skip
_LATIN_PRODUCTS = (
    "Green Tea", "Olive Oil", "Shampoo", "Natural Honey", "Dark Chocolate", "Mineral Water", "Coffee Beans",
    "Hand Cream", "Basmati Rice", "Tomato Paste", "Biscuits", "Saffron", "Toothpaste",
)  # fmt: skip
_UNITS = {  # unit -> (Persian template, Latin template, amounts)
    "g": ("{} گرم", "{} g", (100, 200, 250, 400, 450, 500, 750, 900)),
    "kg": ("{} کیلوگرم", "{} kg", (1, 2, 5)),
    "l": ("{} لیتر", "{} L", (1, 1.5, 2)),
    "ml": ("{} میلی لیتر", "{}ml", (200, 250, 330, 500, 750)),
}
_FA_FINE_PRINT = (
    "ترکیبات: آب، شکر، نمک، اسید سیتریک", "ترکیبات: شیر پاستوریزه، خامه، نمک", "تاریخ تولید: {date}",
    "تاریخ انقضا: {date}", "ساخت ایران", "پروانه ساخت: {num}", "سری ساخت: {num}", "در جای خشک و خنک نگهداری شود",
)  # fmt: skip
_LATIN_FINE_PRINT = (
    "Ingredients: water, sugar, salt, citric acid", "Ingredients: wheat flour, sugar, palm oil", "EXP {edate}",
    "MFD {edate}", "Made in Iran", "Store in a cool, dry place", "Batch {num}", "Best before {edate}",
)  # fmt: skip


class Writer:
    """Draws fitted text lines onto a design and remembers texts and fonts."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng, self.split = rng, split
        self.texts: list[str] = []
        self.fonts: list[str] = []

    def line(
        self,
        design: Image.Image,
        text: str,
        box: tuple[float, float, float, float],
        color: tuple[int, int, int],
        align: str = "center",
        latin: str | None = None,
    ) -> float:
        """Fit ``text`` into ``box`` and paint it; ``latin`` replaces Persian text no font of the pool draws.

        Returns the bottom of the drawn text (the box top when nothing was drawn).
        """
        font_path = font_for(self.rng, text, self.split)
        if not font_path and is_persian(text):
            if latin is None:
                return box[1]
            text, font_path = latin, font_for(self.rng, latin, self.split)
        x0, y0, x1, y1 = box
        mask = plain_mask(text, fit_font(text, font_path, x1 - x0, y1 - y0), "right" if is_persian(text) else "left")
        x = {"center": x0 + (x1 - x0 - mask.width) / 2, "left": x0, "right": x1 - mask.width}[align]
        y = y0 + (y1 - y0 - mask.height) / 2
        paint(design, mask, color, (round(x), round(y)))
        self.texts.append(text)
        self.fonts.append(Path(font_path).name if font_path else "pillow-default")
        return y + mask.height


def _latin_brand(rng: random.Random) -> str:
    """A made-up Latin brand name from syllables."""
    name = "".join(rng.choice(_BRAND_SYLLABLES) for _ in range(rng.choice((1, 2)))) + rng.choice(_BRAND_ENDINGS)
    return name.upper() if rng.random() < 0.5 else name.capitalize()


def _amount(rng: random.Random, persian: bool) -> str:
    """A weight or volume, Persian or Latin."""
    fa, latin, amounts = _UNITS[rng.choice(tuple(_UNITS))]
    value = rng.choice(amounts)
    number = f"{value:g}"
    if persian:
        text = fa.format(number.translate(PERSIAN_DIGITS))
        return f"وزن خالص: {text}" if "گرم" in text and rng.random() < 0.3 else text
    text = latin.format(number)
    return f"NET WT {text}" if text.endswith("g") and rng.random() < 0.3 else text


def _fine_print(rng: random.Random, persian: bool) -> str:
    """One line of label fine print (ingredients, dates, batch), Persian or Latin."""
    template = rng.choice(_FA_FINE_PRINT if persian else _LATIN_FINE_PRINT)
    date = f"{rng.randint(1401, 1404)}/{rng.randint(1, 12):02d}/{rng.randint(1, 29):02d}"
    edate = f"{rng.randint(2024, 2027)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
    num = f"{rng.randint(10, 99)}/{rng.randint(10000, 99999)}"
    text = template.format(date=date, edate=edate, num=num)
    return text.translate(PERSIAN_DIGITS) if persian and rng.random() < 0.7 else text


def _light_color(
    rng: random.Random, saturation: tuple[float, float], value: tuple[float, float]
) -> tuple[int, int, int]:
    """A colour from a random hue with saturation and value in the given ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return (round(r * 255), round(g * 255), round(b * 255))


def _contrasting(rng: random.Random, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """A dark or light ink that reads on ``background`` (sometimes coloured)."""
    dark = luma(background) > 140
    for _ in range(6):
        if rng.random() < 0.6:
            v = rng.randint(15, 45) if dark else rng.randint(235, 252)
            color = (v, v, v)
        else:
            color = _light_color(rng, (0.5, 1.0), (0.2, 0.45) if dark else (0.85, 1.0))
        if abs(luma(color) - luma(background)) >= 90:
            return color
    return (20, 20, 20) if dark else (250, 250, 250)


def _barcode(rng: random.Random, size: tuple[int, int], split: str, writer: Writer) -> Image.Image:
    """An EAN-13-like barcode with its digits below, on white."""
    w, h = size
    code = Image.new("RGBA", size, (255, 255, 255, 255))
    draw = ImageDraw.Draw(code)
    left_half = [rng.randrange(2) for _ in range(42)]
    right_half = [rng.randrange(2) for _ in range(42)]
    modules = [1, 0, 1] + left_half + [0, 1, 0, 1, 0] + right_half + [1, 0, 1]
    unit = (w * 0.9) / len(modules)
    x0, bar_bottom = w * 0.05, h * 0.72
    guards = {0, 2, 45, 47, 49, 92, 94}
    for i, bit in enumerate(modules):
        if bit:
            bottom = h * 0.8 if i in guards else bar_bottom
            draw.rectangle((x0 + i * unit, h * 0.05, x0 + (i + 1) * unit - 0.5, bottom), fill=(10, 10, 10, 255))
    digits = "626" + "".join(str(rng.randrange(10)) for _ in range(10))
    writer.line(code, f"{digits[0]} {digits[1:7]} {digits[7:]}", (w * 0.05, h * 0.76, w * 0.95, h * 0.99), (10, 10, 10))
    return code


def design_label(rng: random.Random, split: str, writer: Writer) -> tuple[Image.Image, tuple, tuple]:
    """A product label: paper, optional border, brand, product, amount, barcode, fine print."""
    w = 420
    h = round(w * rng.uniform(0.55, 0.9))
    paper_kind = weighted(rng, {"cream": 0.35, "white": 0.25, "pale": 0.2, "strong": 0.2})
    paper = {
        "cream": lambda: (rng.randint(240, 252), rng.randint(232, 245), rng.randint(205, 228)),
        "white": lambda: (rng.randint(243, 252),) * 3,
        "pale": lambda: _light_color(rng, (0.1, 0.3), (0.9, 1.0)),
        "strong": lambda: _light_color(rng, (0.55, 0.95), (0.35, 0.8)),
    }[paper_kind]()
    ink = _contrasting(rng, paper)
    accent = _contrasting(rng, paper)
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    shape = Image.new("L", (w, h))
    radius = rng.choice((0, 0, round(0.04 * w), round(0.08 * w)))
    ImageDraw.Draw(shape).rounded_rectangle((0, 0, w - 1, h - 1), radius=radius, fill=255)
    paint(design, shape, paper)
    if rng.random() < 0.5:
        inset = round(0.03 * w)
        line = Image.new("L", (w, h))
        ImageDraw.Draw(line).rounded_rectangle(
            (inset, inset, w - 1 - inset, h - 1 - inset),
            radius=max(0, radius - inset),
            outline=255,
            width=max(2, round(0.008 * w)),
        )
        paint(design, line, accent)
    margin = 0.07 * w
    persian_brand = rng.random() < 0.45
    brand = rng.choice(_FA_BRANDS) if persian_brand else _latin_brand(rng)
    y = writer.line(design, brand, (margin, 0.05 * h, w - margin, 0.27 * h), accent, latin=_latin_brand(rng))
    persian_product = rng.random() < 0.7
    product = rng.choice(_FA_PRODUCTS) if persian_product else rng.choice(_LATIN_PRODUCTS)
    y = writer.line(design, product, (margin, y + 0.03 * h, w - margin, y + 0.18 * h), ink,
                    latin=rng.choice(_LATIN_PRODUCTS))  # fmt: skip
    persian_amount = rng.random() < 0.5
    y = writer.line(design, _amount(rng, persian_amount), (margin, y + 0.02 * h, w - margin, y + 0.12 * h), ink,
                    latin=_amount(rng, False))  # fmt: skip
    top, bottom = y + 0.04 * h, h - 0.06 * h
    fine_left, fine_right = margin, w - margin
    if rng.random() < 0.7 and bottom - top > 0.12 * h:
        code_w = round(0.32 * w)
        code_h = round(min(0.3 * h, bottom - top))
        code = _barcode(rng, (code_w, code_h), split, writer)
        if rng.random() < 0.5:
            design.alpha_composite(code, dest=(round(w - margin - code_w), round(bottom - code_h)))
            fine_right = w - margin - code_w - 0.04 * w
        else:
            design.alpha_composite(code, dest=(round(margin), round(bottom - code_h)))
            fine_left = margin + code_w + 0.04 * w
    n_lines = rng.choice((2, 3))
    step = (bottom - top) / n_lines
    if step >= 5:
        for k in range(n_lines):
            persian = rng.random() < 0.6
            text = _fine_print(rng, persian)
            writer.line(design, text, (fine_left, top + k * step, fine_right, top + (k + 0.8) * step), ink,
                        align="right" if is_persian(text) else "left", latin=_fine_print(rng, False))  # fmt: skip
    return design, accent, paper


def design_price_tag(rng: random.Random, split: str, writer: Writer) -> tuple[Image.Image, tuple, tuple]:
    """A price sticker or luggage tag: label word, optional struck-out old price, the price."""
    w = 260
    h = round(w * rng.uniform(0.45, 0.7))
    paper = rng.choice(((250, 215, 30), (210, 35, 45), (248, 248, 246), (245, 140, 30), (40, 150, 70), (240, 90, 150)))
    ink = (20, 20, 20) if luma(paper) > 140 else (250, 250, 250)
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    shape = Image.new("L", (w, h))
    draw = ImageDraw.Draw(shape)
    tag = rng.random() < 0.4
    left = 0.0
    if tag:  # luggage-tag outline: pointed left end with a punched hole
        point = 0.2 * w
        draw.polygon([(0, h / 2), (point, 0), (w - 1, 0), (w - 1, h - 1), (point, h - 1)], fill=255)
        r = 0.06 * h
        draw.ellipse((point * 0.55 - r, h / 2 - r, point * 0.55 + r, h / 2 + r), fill=0)
        left = point
    else:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=round(rng.uniform(0.03, 0.2) * h), fill=255)
    paint(design, shape, paper)
    margin = 0.06 * w
    persian = rng.random() < 0.65
    labels = ("قیمت", "فقط", "ویژه", "قیمت مصرف کننده") if persian else ("PRICE", "SALE", "ONLY", "NEW")
    label = rng.choice(labels)
    y = writer.line(design, label, (left + margin, 0.06 * h, w - margin, 0.3 * h), ink, latin="PRICE")
    amount = rng.randint(19, 990) * 1000
    if persian:
        price = f"{amount:,}".replace(",", "٬").translate(PERSIAN_DIGITS) + " تومان"
    else:
        dollars, euros = rng.randint(2, 99), rng.randint(2, 60)
        price = rng.choice((f"{amount:,} T", f"${dollars}.99", f"{amount // 1000}K", f"€{euros},90"))
    bottom = 0.94 * h
    if rng.random() < 0.3:  # the old price, struck through
        old = f"{amount * 5 // 4:,}"
        old = old.replace(",", "٬").translate(PERSIAN_DIGITS) if persian else old
        end = writer.line(design, old, (left + margin + 0.2 * w, y + 0.01 * h, w - margin - 0.2 * w, y + 0.2 * h), ink,
                          latin=f"{amount * 5 // 4:,}")  # fmt: skip
        strike = Image.new("L", (w, h))
        ImageDraw.Draw(strike).line((left + margin + 0.25 * w, (y + end) / 2 + 0.02 * h, w - margin - 0.25 * w,
                                     (y + end) / 2 - 0.02 * h), fill=255, width=max(2, round(0.012 * h)))  # fmt: skip
        paint(design, strike, ink)
        y = end
    writer.line(design, price, (left + margin, y + 0.04 * h, w - margin, bottom), ink, latin=f"{amount:,} T")
    writer.texts.insert(0, writer.texts.pop())  # the price is the main line
    writer.fonts.insert(0, writer.fonts.pop())
    return design, ink, paper


def design_box_face(rng: random.Random, split: str, writer: Writer) -> tuple[Image.Image, tuple, tuple]:
    """The front of a box: coloured panel, optional band or swoosh, brand, product, amount."""
    w = 520
    h = round(w * rng.uniform(0.6, 1.0))
    roll = rng.random()
    panel = _light_color(rng, (0.5, 0.95), (0.35, 0.9)) if roll < 0.7 else (
        (rng.randint(15, 40),) * 3 if roll < 0.85 else (rng.randint(238, 250),) * 3)  # fmt: skip
    design = Image.new("RGBA", (w, h), (*panel, 255))
    accent = _light_color(rng, (0.6, 1.0), (0.6, 1.0))
    if rng.random() < 0.6:  # a band or a swoosh in a second colour
        band = Image.new("L", (w, h))
        top = rng.uniform(0.55, 0.75) * h
        if rng.random() < 0.5:
            ImageDraw.Draw(band).rectangle((0, top, w, top + rng.uniform(0.12, 0.25) * h), fill=255)
        else:
            swoosh = [(0, top), (w, top - 0.15 * h), (w, top + 0.05 * h), (0, top + 0.2 * h)]
            ImageDraw.Draw(band).polygon(swoosh, fill=255)
        paint(design, band, accent)
    edge = Image.new("L", (w, h))
    ImageDraw.Draw(edge).rectangle((0, 0, w - 1, h - 1), outline=255, width=max(2, round(0.012 * w)))
    paint(design, edge, tuple(round(c * 0.75) for c in panel))  # type: ignore[arg-type]
    ink = _contrasting(rng, panel)
    persian_brand = rng.random() < 0.4
    brand = rng.choice(_FA_BRANDS) if persian_brand else _latin_brand(rng)
    margin = 0.08 * w
    y = writer.line(design, brand, (margin, 0.1 * h, w - margin, 0.4 * h), ink, latin=_latin_brand(rng))
    product = rng.choice(_FA_PRODUCTS) if rng.random() < 0.6 else rng.choice(_LATIN_PRODUCTS)
    writer.line(
        design, product, (margin, y + 0.04 * h, w - margin, y + 0.16 * h), ink, latin=rng.choice(_LATIN_PRODUCTS)
    )
    amount = _amount(rng, rng.random() < 0.5)
    writer.line(design, amount, (w * 0.55, 0.86 * h, w - margin, 0.95 * h), _contrasting(rng, panel), align="right",
                latin=_amount(rng, False))  # fmt: skip
    return design, ink, panel


def design_printed(rng: random.Random, split: str, writer: Writer, surface: float) -> tuple[Image.Image, tuple, None]:
    """Text printed straight on the object: no background, ink chosen against the surface luminance."""
    dark = surface > 120
    if rng.random() < 0.7:
        v = rng.randint(10, 45) if dark else rng.randint(225, 250)
        ink = (v, v, v)
    else:
        ink = _light_color(rng, (0.5, 1.0), (0.25, 0.45) if dark else (0.85, 1.0))
    if rng.random() < 0.15 and not dark:
        ink = (212, 175, 55)  # gold foil on a dark object
    w = 480
    h = round(w * rng.uniform(0.35, 0.6))
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    brand = rng.choice(_FA_BRANDS) if rng.random() < 0.45 else _latin_brand(rng)
    lines = [(brand, 0.5)]
    if rng.random() < 0.75:
        lines.append((rng.choice(_FA_PRODUCTS) if rng.random() < 0.6 else rng.choice(_LATIN_PRODUCTS), 0.25))
    if rng.random() < 0.5:
        lines.append((_amount(rng, rng.random() < 0.5), 0.18))
    total = sum(share for _, share in lines)
    y = 0.03 * h
    for text, share in lines:
        height = share / total * 0.94 * h
        latin = _latin_brand(rng) if text == brand else rng.choice(_LATIN_PRODUCTS)
        y = max(y, writer.line(design, text, (0.04 * w, y, 0.96 * w, y + height), ink, latin=latin))
    bbox = design.getchannel("A").getbbox()
    if bbox is not None:
        design = design.crop((max(0, bbox[0] - 4), max(0, bbox[1] - 4), min(w, bbox[2] + 4), min(h, bbox[3] + 4)))
    return design, ink, None
