#!/usr/bin/env python
"""A screenshot of an app's web page after one request, for the docs (docs/images/app-page.png).

    python tools/app_screenshot.py APP.app.md --out docs/images/app-page.png \
        [--message "Where do you ship?"] [-i key=value ...] [--width 720] [--explain]

Serves the app (as `llmos app serve` does) on a free loopback port, opens its page in headless
Chromium (Debian's /usr/bin/chromium through Playwright's Python package; nothing downloaded),
sends the message (chat apps) or the form with the given inputs, waits for the reply to finish,
and saves the page as a palette PNG (Pillow, when installed) so that it stays small.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("app")
    ap.add_argument("--out", default="docs/images/app-page.png")
    ap.add_argument("--message", default=None, help="what to say, for a chat app")
    ap.add_argument("-i", dest="inputs", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from llmos.runtime.engine import Engine
    from llmos.serve.app import create_app

    guard = create_app([], engine_factory=Engine, apps=[args.app])
    name = guard.app.state.apps[0].name
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(guard, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
            page.goto(f"http://127.0.0.1:{port}/apps/{name}")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            for item in args.inputs:
                key, _, value = item.partition("=")
                field = page.locator(f"#in-{key}")
                if field.evaluate("n => n.tagName") == "SELECT":
                    field.select_option(value)
                elif field.get_attribute("type") == "checkbox":
                    field.set_checked(value.lower() in ("1", "true", "yes"))
                else:
                    field.fill(value)
            if args.explain:
                page.locator("#explain").check()
            if args.message is not None:
                page.locator("#message").fill(args.message)
            page.locator("#send").click()
            page.wait_for_function("() => !document.querySelector('#send').disabled", timeout=120_000)
            page.wait_for_timeout(200)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    try:
        from PIL import Image

        Image.open(out).convert("RGB").quantize(colors=64).save(out, optimize=True)
    except ImportError:
        pass
    print(f"{out}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
