"""The review page end to end: a real TorchServe serving a tiny archive, the review app on a
free loopback port, and Debian's Chromium driven headless by Selenium (chromium-driver;
scripts/setup_test_system.sh installs both). Nothing leaves 127.0.0.1.

Screenshots go to the test's tmp dir and, when $REVIEW_SCREENSHOTS_DIR is set, there too
(`REVIEW_SCREENSHOTS_DIR=docs` made docs/review-page.png and docs/review-heatmap.png).
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server

from review.app import create_app
from review.config import ReviewConfig
from review.store import ReviewStore, sha256_hex
from tests import serving_fixtures as sf
from tests.ts_server import REPO, TIMEOUT, needs_server, serve_tiny_export

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAVE_BROWSER = CHROMIUM.exists() and CHROMEDRIVER.exists()
needs_browser = pytest.mark.skipif(not HAVE_BROWSER, reason="run scripts/setup_test_system.sh (chromium, chromium-driver, postgresql)")
REVIEWER = "Test Moderator"
WAIT = 60


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    yield from serve_tiny_export(tmp_path_factory.mktemp("review-torchserve"))


class LiveApp:
    """The review app served by Werkzeug's threaded server in a thread of this process."""

    def __init__(self, config: ReviewConfig) -> None:
        self.config = config
        self.server = make_server("127.0.0.1", sf.free_port(), create_app(config), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> LiveApp:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def review_app(torchserve, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-app")
    config = ReviewConfig(
        inference_url=torchserve.inference, key_file=torchserve.key_file, db=root / "decisions.sqlite",
        photos=root / "photos",
    )
    with LiveApp(config) as app:
        yield app


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not HAVE_BROWSER:
        pytest.skip("run scripts/setup_test_system.sh (chromium, chromium-driver, postgresql)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- helpers
# A PNG drawn on a canvas, dropped on the drop zone as a browser's drag and drop would.
DROP_PHOTO = """
const canvas = document.createElement("canvas");
canvas.width = 160; canvas.height = 120;
const ctx = canvas.getContext("2d");
ctx.fillStyle = "#3a7"; ctx.fillRect(0, 0, 160, 120);
ctx.fillStyle = "#fff"; ctx.font = "20px sans-serif"; ctx.fillText("@shop", 40, 70);
canvas.toBlob((blob) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
}, "image/png");
"""


def wait_for(driver, condition, what: str, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=f"waited {timeout}s for {what}")


def card_states(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.state)")


def upload_files(driver, paths: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "pick-files").send_keys("\n".join(str(p) for p in paths))


def screenshot(driver, tmp_path: Path, name: str, *, publish: bool = True) -> Path:
    """Save a screenshot in ``tmp_path`` and, when ``publish``, in $REVIEW_SCREENSHOTS_DIR too."""
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if publish and os.environ.get("REVIEW_SCREENSHOTS_DIR"):
        target = Path(os.environ["REVIEW_SCREENSHOTS_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as shot:  # 256 colours: a few hundred KB less for the repository
            shot.convert("RGB").quantize(256).save(target / name, optimize=True)
    return path


def requested_urls(driver) -> set[str]:
    """URLs the page requested since the last call (Chrome's performance log)."""
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def photo_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "shelf.jpg": sf.jpeg_bytes(512, 384, seed=1),
        "mug.png": sf.png_bytes(400, 400, seed=2),
        "lamp.jpg": sf.jpeg_bytes(300, 420, seed=3),
        "notes.txt": b"not a photo\n",
        "empty.jpg": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


# ---------------------------------------------------------------- the page in a browser
@needs_server
@needs_browser
def test_review_page_in_a_browser(torchserve, review_app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    files = photo_files(tmp_path / "upload")
    driver.get(review_app.url + "/")
    wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    driver.find_element(By.ID, "reviewer").send_keys(REVIEWER)

    # upload three photos, a text file and an empty file at once
    upload_files(driver, list(files.values()))
    wait_for(driver, lambda d: len(card_states(d)) == 5 and "checking" not in card_states(d), "5 checked cards")
    cards = driver.find_elements(By.CSS_SELECTOR, ".card")
    by_name = {c.find_element(By.CSS_SELECTOR, ".name").text: c for c in cards}
    results = driver.execute_script("return window.review.state.cards.map(c => c.result)")
    for name in ("shelf.jpg", "mug.png", "lamp.jpg"):
        card = by_name[name]
        assert card.get_attribute("data-state") == "checked"
        assert card.find_element(By.CSS_SELECTOR, ".verdict").text in ("watermark", "clean")
        prob = card.find_element(By.CSS_SELECTOR, ".prob").text
        assert prob.startswith("p = 0.") and prob.endswith(f"(threshold {sf.THRESHOLD:.3f})"), prob
    for name, why in (("notes.txt", "not a decodable image"), ("empty.jpg", "empty file")):
        message = by_name[name].find_element(By.CSS_SELECTOR, ".error").text
        assert by_name[name].get_attribute("data-state") == "error"
        assert message.startswith(f"{name}: ") and why in message and "allowed are JPEG" in message, message
    assert driver.find_element(By.ID, "banner").get_attribute("hidden") is not None
    screenshot(driver, tmp_path, "review-page.png")

    # the heat-map of the first photo: toggled with h on the selected card
    first = driver.find_elements(By.CSS_SELECTOR, ".card")[0]
    first_result = results[0]
    first.find_element(By.CSS_SELECTOR, ".name").click()  # selects the card (not a button)
    if first_result["heatmap"]:
        press(driver, "h")
        heat = first.find_element(By.CSS_SELECTOR, "img.heat")
        wait_for(driver, lambda d: d.execute_script("const i = arguments[0]; return !i.hidden && i.complete && i.naturalWidth > 0", heat), "the heat-map image")
        assert heat.is_displayed()
        screenshot(driver, tmp_path, "review-heatmap.png")
    else:  # a model exported before explanations: the verdict alone, and why there is no heat-map
        assert first_result["heatmap_note"].startswith("no heat-map")
        assert not first.find_element(By.CSS_SELECTOR, ".heat-toggle").is_displayed()

    # overturn the first verdict with the keyboard; agree with the second (j moves on)
    overturn = "a" if first_result["verdict"] == "watermark" else "r"
    press(driver, overturn)
    wait_for(driver, lambda d: first.find_element(By.CSS_SELECTOR, ".saved").text.startswith("saved:"), "saved")
    assert "overturns the model" in first.find_element(By.CSS_SELECTOR, ".saved").text
    press(driver, "j")
    second, second_result = driver.find_elements(By.CSS_SELECTOR, ".card")[1], results[1]
    agree = "r" if second_result["verdict"] == "watermark" else "a"
    press(driver, agree)
    wait_for(driver, lambda d: second.find_element(By.CSS_SELECTOR, ".saved").text.startswith("saved:"), "saved")
    rows = {r.photo_sha256: r for r in ReviewStore(review_app.config.db).decisions()}
    assert len(rows) == 2
    stored = rows[first_result["sha256"]]
    assert stored.overturned and stored.reviewer == REVIEWER and stored.file_name == first_result["file"]
    assert stored.decision == ("accept" if overturn == "a" else "reject")
    assert stored.probability == pytest.approx(first_result["probability"]) and stored.version == "1.0"
    assert not rows[second_result["sha256"]].overturned

    # "rejected only" shows the cards rejected by the moderator or, undecided, by the model
    decided = {first_result["sha256"]: stored.decision, second_result["sha256"]: rows[second_result["sha256"]].decision}
    expected = sum(
        1 for r in results if r["ok"] and decided.get(r["sha256"], "reject" if r["verdict"] == "watermark" else "accept") == "reject"
    )
    driver.find_element(By.ID, "rejected-only").click()
    assert len([c for c in driver.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]) == expected
    driver.find_element(By.ID, "rejected-only").click()

    # the session's CSV: every checked photo, with the decisions made
    table = list(csv.DictReader(io.StringIO(driver.execute_script("return window.review.sessionCsv()"))))
    assert sorted(r["file"] for r in table) == ["lamp.jpg", "mug.png", "shelf.jpg"]
    by_sha = {r["sha256"]: r for r in table}
    assert by_sha[first_result["sha256"]]["decision"] == stored.decision
    assert by_sha[first_result["sha256"]]["reviewer"] == REVIEWER and by_sha[first_result["sha256"]]["version"] == "1.0"

    # back to training: the overturned photo lands in the folder of its decision
    out = tmp_path / "feedback"
    exported = subprocess.run(
        [sys.executable, "-m", "train", "review-export", "--db", str(review_app.config.db),
         "--photos", str(review_app.config.photos), "--out", str(out), "--only", "overturned"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    folder = "negative" if stored.decision == "accept" else "positive"
    exported_photo = out / folder / stored.photo_file
    assert exported_photo.read_bytes() == files[stored.file_name].read_bytes()
    assert [p.name for p in (out / ("positive" if folder == "negative" else "negative")).iterdir()] == []

    # a folder (the folder picker) and a photo dropped on the page
    before = len(card_states(driver))
    folder = tmp_path / "shop-folder"
    folder.mkdir()
    (folder / "bag.jpg").write_bytes(sf.jpeg_bytes(240, 180, seed=21))
    driver.find_element(By.ID, "pick-folder").send_keys(str(folder))
    driver.execute_script(DROP_PHOTO)
    wait_for(driver, lambda d: len(card_states(d)) == before + 2 and "checking" not in card_states(d), "2 more cards")
    names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in driver.find_elements(By.CSS_SELECTOR, ".card")][before:]
    assert sorted(names) == ["dropped.png", "shop-folder/bag.jpg"]
    assert card_states(driver)[before:] == ["checked", "checked"]

    # TorchServe stops: a banner, and the photo is not lost (retry); it comes back: it works
    torchserve.stop()
    upload_files(driver, [files["shelf.jpg"]])
    banner = driver.find_element(By.ID, "banner")
    wait_for(driver, lambda d: banner.is_displayed(), "the banner")
    assert banner.text.startswith("server unavailable"), banner.text
    last = driver.find_elements(By.CSS_SELECTOR, ".card")[-1]
    wait_for(driver, lambda d: last.get_attribute("data-state") == "error", "the failed card")
    assert "server unavailable" in last.find_element(By.CSS_SELECTOR, ".error").text
    screenshot(driver, tmp_path, "review-unavailable.png", publish=False)
    torchserve.start()  # new keys in the same key file: the app reads it again when refused
    wait_for(driver, lambda d: not banner.is_displayed(), "the banner to go (health poll)", timeout=30)
    last.find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_for(driver, lambda d: last.get_attribute("data-state") == "checked", "the retried card")
    assert last.find_element(By.CSS_SELECTOR, ".verdict").text == first_result["verdict"]  # same photo as the first

    # every network request the browser logged went to the app on loopback (blob:, data: and
    # chrome:// resources are local)
    urls = [u for u in requested_urls(driver) if u.startswith(("http:", "https:", "ws:", "wss:"))]
    assert any(u.startswith(review_app.url + "/api/check") for u in urls)
    assert [u for u in urls if not u.startswith(review_app.url + "/")] == []


# ---------------------------------------------------------------- the API against a real TorchServe
@needs_server
def test_double_click_stores_one_decision_and_the_key_never_reaches_a_client(torchserve, review_app):
    photo = sf.jpeg_bytes(200, 150, seed=40)
    checked = requests.post(f"{review_app.url}/api/check", files={"files": ("double.jpg", photo, "image/jpeg")}, timeout=TIMEOUT)
    assert checked.status_code == 200, checked.text
    sha = checked.json()["results"][0]["sha256"]
    barrier = threading.Barrier(2)

    def click(_: int) -> requests.Response:
        barrier.wait(timeout=10)
        return requests.post(f"{review_app.url}/api/decisions", json={"sha256": sha, "decision": "reject", "reviewer": "Twin"}, timeout=TIMEOUT)

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(click, range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    rows = [r for r in ReviewStore(review_app.config.db).decisions() if r.photo_sha256 == sha]
    assert len(rows) == 1 and rows[0].reviewer == "Twin"

    key = torchserve.key()
    bodies = [checked.text, *(a.text for a in answers)]
    for path in ("/", "/static/review.js", "/api/config", "/api/health", f"/api/heatmap/{sha}.png?w=64"):
        resp = requests.get(review_app.url + path, timeout=TIMEOUT)
        bodies.append(resp.content.decode("latin-1") + json.dumps(dict(resp.headers)))
    assert all(key not in body for body in bodies)


@needs_server
def test_a_photo_that_cannot_be_stored_gets_its_own_error(torchserve, tmp_path):
    blocked = tmp_path / "photos"
    blocked.write_text("a file where the photo folder should be")
    config = ReviewConfig(inference_url=torchserve.inference, key_file=torchserve.key_file,
                          db=tmp_path / "decisions.sqlite", photos=blocked)
    with LiveApp(config) as app:
        resp = requests.post(f"{app.url}/api/check", files=[("files", ("a.jpg", sf.jpeg_bytes(seed=50), "image/jpeg")),
                                                             ("files", ("b.txt", b"text", "text/plain"))], timeout=TIMEOUT)
    assert resp.status_code == 200
    stored, bad = resp.json()["results"]
    assert stored["status"] == 500 and stored["error"].startswith("a.jpg: checked, but not stored")
    assert bad["status"] == 400 and bad["error"].startswith("b.txt: not a decodable image")
    assert ReviewStore(config.db).get_check(sha256_hex(sf.jpeg_bytes(seed=50))) is None


@needs_server
def test_a_renewed_key_is_read_again(torchserve, review_app):
    before = torchserve.key()
    renewed = requests.post(f"{torchserve.management}/token?type=inference", headers=torchserve.auth("API"), timeout=TIMEOUT)
    assert renewed.status_code == 200, renewed.text
    assert torchserve.key() != before
    resp = requests.post(f"{review_app.url}/api/check", files={"files": ("k.jpg", sf.jpeg_bytes(seed=41), "image/jpeg")}, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json()["results"][0]["ok"], resp.text


@needs_server
def test_response_times_through_the_app_and_direct(torchserve, review_app):
    """Median wall time for one 512 x 512 JPEG: the app's /api/check against TorchServe's own
    /explanations (what the app calls). Printed for the README; only sanity-checked here."""
    photos = [sf.jpeg_bytes(512, 512, seed=100 + i) for i in range(12)]

    def timed(send) -> float:
        times = []
        for data in photos:
            start = time.perf_counter()
            resp = send(data)
            times.append(time.perf_counter() - start)
            assert resp.status_code == 200, resp.text
        return statistics.median(times[2:])  # the first two warm up

    session = requests.Session()
    session.trust_env = False
    direct = timed(lambda d: session.post(f"{torchserve.inference}/explanations/watermark", data=d, headers=torchserve.auth(), timeout=TIMEOUT))
    through = timed(lambda d: session.post(f"{review_app.url}/api/check", files={"files": ("p.jpg", d, "image/jpeg")}, timeout=TIMEOUT))
    print(f"\nreview app /api/check median {through * 1000:.1f} ms, TorchServe /explanations median {direct * 1000:.1f} ms "
          f"(one 512x512 JPEG, tiny model, {os.cpu_count()} CPUs)")
    assert through < direct + 2.0
