"""Shared helpers of the browser tests (Debian's chromium driven by Playwright; never a browser download)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    for module in ("gradio", "playwright", "pytest_playwright"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install -e '.[apps,dev]'"
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=/path/to/chromium)"
    return None


SKIP_REASON = chromium_missing()
browser_test = pytest.mark.skipif(SKIP_REASON is not None, reason=f"browser tests skipped: {SKIP_REASON}")


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$HF_EXT_TEST_ARTIFACTS/screenshots`` (CI keeps them) or the test's tmp folder."""
    root = os.environ.get("HF_EXT_TEST_ARTIFACTS")
    path = Path(root) / "screenshots" if root else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


class AppProcess:
    """``python -m hf_ext.cli ARGS --port P`` as a killable process group (same port on every start)."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log = args, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hf_ext.cli", *self.args, "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_http(self.url, self.proc)
        except Exception:
            self.kill()
            raise RuntimeError(f"app did not start; its log:\n{self.log.read_text()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: nothing gets to clean up)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def watch_console(page) -> list[str]:
    """Collect page errors and console errors of ``page``."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    return errors


def record_values(page, selector: str) -> None:
    """Record every value the element takes (``window.seen``): ``expect`` polls too slowly to see a stream."""
    page.evaluate(
        """(sel) => { window.seen = []; (function poll() { const t = document.querySelector(sel);
          if (t && window.seen.at(-1) !== t.value) window.seen.push(t.value); requestAnimationFrame(poll); })(); }""",
        selector,
    )


def watch_stream_messages(page) -> None:
    """Before ``goto``: count the streamed updates the page *receives* (``window.generating``, one per server-side
    yield). Rendering may coalesce several updates into one frame on a busy machine, so this, not the DOM, proves that
    the server streamed to the browser."""
    page.add_init_script(
        """(() => { const parse = JSON.parse; window.generating = 0;
          JSON.parse = function (text, reviver) { const value = parse.call(this, text, reviver);
            if (value && value.msg === "process_generating") window.generating += 1; return value; }; })();"""
    )


def slow_machine_timeouts(context) -> None:
    """CI machines are shared: wait up to 60 s for actions and 30 s for ``expect`` (Playwright's defaults: 30 s, 5 s)."""
    from playwright.sync_api import expect

    context.set_default_timeout(60_000)
    expect.set_options(timeout=30_000)
