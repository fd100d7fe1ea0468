"""Debian's chromium, headless, driven by Selenium through Debian's chromedriver (no browser is
downloaded). Tests that need it skip, saying why, where either is missing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Where screenshots go: docs/img with `make screenshots`, else the test's own directory.
SCREENSHOTS = "RECONCILER_SCREENSHOTS"


def missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install {package} (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: make .venv/.installed installs the test extra"
    return None


class Browser:
    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, what: str, *args: Any, timeout: float = 60) -> Any:
        """Wait until ``script`` (a function body returning a value) returns something true."""
        return wait_for(
            lambda: self.js(script, *args),
            what,
            timeout=timeout,
            every=0.05,
            details=lambda: self.js("return document.body.innerText.slice(0, 2000)"),
        )

    def text(self, selector: str) -> str:
        return str(
            self.js(
                "const n = document.querySelector(arguments[0]); return n ? n.textContent : ''",
                selector,
            )
        )

    def screenshot(self, name: str, width: int = 1280, height: int = 860) -> Path:
        self.driver.set_window_size(width, height)
        path = self.shots / f"dashboard-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@contextmanager
def chromium(tmp: Path) -> Iterator[Browser]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # a short path of its own: chromium's singleton socket lives in the profile, and a Unix
    # socket's path may not pass 107 bytes (a test's tmp_path can)
    profile = tempfile.mkdtemp(prefix="rc-chromium-", dir="/tmp")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # this machine has no internet: no phoning home
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,860",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        shots = Path(os.environ.get(SCREENSHOTS) or tmp)
        shots.mkdir(parents=True, exist_ok=True)
        try:
            yield Browser(driver, shots)
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
