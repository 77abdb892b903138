"""The rendered site, in a real headless browser: build it from the committed (executed) notebooks with
scripts/build_site.py (or from the folder SAELIB_SITE_NOTEBOOKS, e.g. a smoke run's executed notebooks), serve it
on 127.0.0.1, and open every page in Chromium (Selenium + chromedriver from Debian's packages). Every page
must load without console errors and without fetching anything from another host; every image must load;
every internal link (and its #anchor) must resolve.

Needs the `site` extra (pip install -e ".[site]") and Debian's `chromium` + `chromium-driver` (.ci/run installs
both). Skipped only when no Chromium can be found, with the reason printed.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
                 if Path(p).exists()), shutil.which("chromium"))
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="no Chromium/chromedriver found (Debian: apt-get install -y chromium chromium-driver; "
                              ".ci/run does this)"),
    pytest.mark.xdist_group("site"),          # one worker builds the site once for both tests
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_site
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("site") / "site"
    notebooks = Path(os.environ.get("SAELIB_SITE_NOTEBOOKS", ROOT / "notebooks"))   # e.g. a smoke run's executed/
    build_site.build(notebooks, ROOT / "figures", ROOT / "figures" / "CLAIMS.md", out)
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",      # any other host fails loudly
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _pages(site: Path) -> list[str]:
    pages = []
    for p in site.rglob("index.html"):
        rel = p.relative_to(site).parent
        if "assets" not in rel.parts:
            pages.append("/" if rel == Path(".") else f"/{rel.as_posix()}/")
    return sorted(pages)


def _ids(html: str) -> set[str]:
    return set(re.findall(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""", html))


def test_the_site_has_an_index_the_claims_and_every_notebook(site):
    pages = _pages(site)
    source = Path(os.environ.get("SAELIB_SITE_NOTEBOOKS", ROOT / "notebooks"))
    notebooks = sorted(p.stem for p in source.glob("[0-9][0-9]_*.ipynb"))
    assert "/" in pages and "/claims/" in pages
    assert [f"/notebooks/{n}/" for n in notebooks] == [p for p in pages if p.startswith("/notebooks/")]
    index = (site / "index.html").read_text(encoding="utf-8")
    for n in notebooks:
        assert f"notebooks/{n}/" in index, f"index does not link {n}"
    claims = (site / "claims" / "index.html").read_text(encoding="utf-8")
    assert "../notebooks/" in claims and "../figures/" in claims, "claims are not linked to notebooks and figures"


def test_every_page_loads_cleanly_in_chromium(site, server, browser):
    problems: list[str] = []
    link_targets: dict[str, set[str]] = {}
    math_on_pages: dict[str, int] = {}
    for page in _pages(site):
        url = server + page
        browser.get_log("performance")                   # drop entries from the previous page
        browser.get(url)
        deadline = time.time() + 20
        while browser.execute_script("return document.readyState") != "complete" and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)                                  # let the search worker start
        for entry in browser.get_log("browser"):
            if entry["level"] == "SEVERE":
                problems.append(f"{page}: console error: {entry['message'][:300]}")
        for entry in browser.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                req = msg["params"]["request"]["url"]
                if not req.startswith((server, "data:", "blob:", "about:")):
                    problems.append(f"{page}: fetched from another host: {req[:200]}")
        if page.startswith("/notebooks/"):
            math_on_pages[page] = browser.execute_script("return document.querySelectorAll('math').length")
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.currentSrc || i.src)")
        problems += [f"{page}: image did not load: {src[:200]}" for src in broken]
        for href in browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            if href.startswith(server):
                link_targets.setdefault(href, set()).add(page)
    problems += _broken_links(server, link_targets)
    if not any(math_on_pages.values()):
        problems.append(f"no MathML equation on any notebook page: {math_on_pages}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def _broken_links(server: str, links: dict[str, set[str]]) -> list[str]:
    """Every same-site link answers 200, and its #fragment names an element of the target page."""
    problems, cache = [], {}
    for href, sources in sorted(links.items()):
        target, _, fragment = href.partition("#")
        if target not in cache:
            try:
                with urllib.request.urlopen(target, timeout=10) as response:
                    cache[target] = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as err:
                cache[target] = err
        body = cache[target]
        where = ", ".join(sorted(sources)[:3])
        if isinstance(body, Exception):
            problems.append(f"link {href} (from {where}): {body}")
        elif fragment and target.endswith("/") and urllib.parse.unquote(fragment) not in _ids(body):
            problems.append(f"link {href} (from {where}): no element with id {fragment!r}")
    return problems
