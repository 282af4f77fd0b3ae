"""Screenshot of the ``tabad serve`` page showing a result: ``benchmarks/reports/serve_page.png``.

Starts ``tabad serve MODEL --example IMAGE`` on 127.0.0.1 (the model of ``serve_load.py``, fitted there
once, unless ``--model``), opens ``/?example=1`` (the page with the example image's overlay, verdict,
score and defect area) in headless Chromium and saves the screenshot; the server is always stopped.
Needs Chromium (Debian: ``apt-get install chromium``).

Usage::

    python benchmarks/serve_screenshot.py [--model M.tabad] [--example IMAGE] [--out PNG]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_load import DEFAULT_DATA, WORK, Server, fitted_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a model file (default: serve_load.py's)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="what serve_load.py fits on, without --model")
    ap.add_argument("--example", type=Path, default=DEFAULT_DATA / "test" / "colour" / "03.jpg")
    ap.add_argument("--out", type=Path, default=HERE / "reports" / "serve_page.png")
    ap.add_argument("--size", default="1200,1050", help="browser window W,H")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=600.0)
    args = ap.parse_args(argv)
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")
    model, _ = fitted_model(args)
    with Server(model, WORK / "screenshot.log", args.threads, 8, extra=("--example", str(args.example))) as server:
        url = f"http://127.0.0.1:{server.port}/?example=1"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                        "--disable-extensions", f"--window-size={args.size}", "--virtual-time-budget=3000",
                        f"--screenshot={args.out}", url], check=True, timeout=120, capture_output=True)
    print(f"wrote {args.out} ({url})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
