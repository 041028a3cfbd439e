"""A small Chromium DevTools-protocol client over ``--remote-debugging-pipe``, for tests with real input events.

Chromium reads commands from file descriptor 3 and writes replies and events to 4, each a JSON message ended by a
NUL byte; nothing else is needed (no websocket, no package). :class:`Browser` opens one page (a target attached in
flat mode) and drives it with ``Input.dispatchMouseEvent`` and ``Input.dispatchKeyEvent``, the events a person makes,
so that a page's handlers see what they would see from a mouse or a keyboard (not ``element.click()`` from script).
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

KEYS = {  # key -> (code, windowsVirtualKeyCode, text)
    "Tab": ("Tab", 9, ""), "Enter": ("Enter", 13, "\r"), "Escape": ("Escape", 27, ""), " ": ("Space", 32, " "),
    "ArrowLeft": ("ArrowLeft", 37, ""), "ArrowRight": ("ArrowRight", 39, ""),
}


def find_chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "chrome") if (found := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


class Browser:
    """Headless Chromium with one page; ``call`` sends a command to the page's session and waits for its reply."""

    def __init__(self, executable: str, profile: Path, *, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        self.timeout = timeout
        commands_read, self._commands = os.pipe()  # we write, Chromium reads on its fd 3
        self._replies, replies_write = os.pipe()  # Chromium writes on its fd 4, we read
        high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)  # above 3 and 4, so that moving one cannot clobber the other
        high_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)

        def arrange() -> None:  # in the child, before exec: its fds 3 and 4 are the pipes' ends
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check", "--mute-audio",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4, high_read, high_write), preexec_fn=arrange)
        for fd in (commands_read, replies_write, high_read, high_write):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.resize(width, height)

    # ------------------------------------------------------------------ protocol
    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no reply from Chromium in time")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    stderr = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                    raise BrowserError(f"Chromium closed its pipe: {stderr}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    # ------------------------------------------------------------------ page
    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"never true: {expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && document.body && document.body.dataset.ready === 'true'")

    def centre(self, selector: str) -> tuple[float, float]:
        """The centre of the first element matching ``selector``, scrolled into view, in viewport coordinates."""
        box = self.evaluate(f"(function () {{ var e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                            " e.scrollIntoView({block: 'center', inline: 'center'}); var r = e.getBoundingClientRect();"
                            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise BrowserError(f"no element {selector}")
        return box[0], box[1]

    # ------------------------------------------------------------------ input
    def click(self, selector: str) -> None:
        """A real mouse click (press and release of the left button) at the element's centre."""
        x, y = self.centre(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none",
                                                   "clickCount": 1 if kind != "mouseMoved" else 0})

    def hover(self, selector: str) -> None:
        """A real mouse move onto the element's centre (no button pressed)."""
        x, y = self.centre(selector)
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "none", "clickCount": 0})

    def press(self, key: str, *, shift: bool = False) -> None:
        """A real key press (down and up) of ``key``: one of :data:`KEYS`."""
        code, virtual, text = KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": virtual, "nativeVirtualKeyCode": virtual,
                  "modifiers": 8 if shift else 0}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown" if text else "rawKeyDown", **common, **({"text": text} if text else {})})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **common})

    def type_text(self, text: str) -> None:
        """Text typed into the focused element (``Input.insertText``: as an input method commits it)."""
        self.call("Input.insertText", {"text": text})

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True)
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
