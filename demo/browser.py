"""Debian's chromium driven by Playwright (no browser download: `playwright install` is never run).
Used by the browser test and demo/screenshots.py."""

import os
import shutil

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    return path if os.path.exists(path) else shutil.which("chromium")


def launch_chromium(playwright):
    path = chromium_path()
    if path is None:
        raise RuntimeError("chromium not found: apt-get install chromium (or set CHROMIUM_PATH)")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
