"""Test-only hooks of the renderer; training, serving and the demo builder never use them.

:func:`pinned_fonts` makes rendered bytes independent of the machine's installed fonts:
inside it, font discovery sees only the given folders (by default matplotlib's bundled
fonts, which the pinned matplotlib wheel ships: DejaVu, STIX, Computer Modern) and no
system Font Awesome, so ``icon_handle`` marks use DejaVu's symbol stand-ins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from train.synth import fonts, icons


@contextlib.contextmanager
def pinned_fonts(*folders: Path) -> Iterator[tuple[Path, ...]]:
    """Discover fonts only in ``folders`` (default: matplotlib's bundled fonts) while inside.

    The font catalog, the font partition and the icon source are rediscovered on entry
    and again on exit, so code after the block sees the machine's fonts as before.

    Yields:
        The folders searched.

    Raises:
        FileNotFoundError: no folder is given and matplotlib's bundled fonts are missing.
    """
    if not folders:
        bundled = fonts.bundled_font_dir()
        if bundled is None or not bundled.is_dir():
            raise FileNotFoundError("matplotlib's bundled fonts (mpl-data/fonts/ttf) are not installed")
        folders = (bundled,)
    fonts.pin_discovery(tuple(folders))
    icons.icon_source.cache_clear()
    try:
        yield tuple(folders)
    finally:
        fonts.pin_discovery(None)
        icons.icon_source.cache_clear()
