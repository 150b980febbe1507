"""Headless Chromium, for tests that check what a person's browser shows (the run report, TFMA's
widget), not only the HTML we wrote: scripts run, images decode, shadow DOM renders."""

import shutil
import subprocess

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def render(page: str, tmp_path, virtual_ms: int = 5000) -> str:
    """The DOM of the local file ``page`` after headless Chromium loaded it and ran its scripts
    (``virtual_ms`` of virtual time: timers fire without waiting for them, and the DOM is read
    when it has passed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: `make test` installs Debian's chromium package"
    out = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", f"--virtual-time-budget={virtual_ms}",
         "--dump-dom", f"file://{page}"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout
