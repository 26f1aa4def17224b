"""A headless Chromium through chromedriver: CI must have it (a skipped browser test there would hide a broken page)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

# Debian's packages `chromium` and `chromium-driver`; .ci/run installs them.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _missing(what: str) -> None:
    """FAIL when CI=true, skip with the reason otherwise."""
    message = f"{what}: install the Debian packages `chromium` and `chromium-driver` (and selenium, a dev dependency)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


@contextmanager
def headless_chromium(width: int = 1100, height: int = 1400) -> Iterator[Any]:
    """A WebDriver on a fresh profile with no network side traffic, quit and cleaned up afterwards."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        _missing("chromium or chromedriver is not on PATH")
    profile = tempfile.mkdtemp(prefix="partkey-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # runs as root in CI
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
