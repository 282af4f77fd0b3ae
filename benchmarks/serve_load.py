"""Load test of ``tabad serve``: a fixed number of requests from concurrent clients, on this machine only.

1. The model: ``--model FILE``, or ``tabad fit`` with its defaults (PatchCore, EfficientNet-Lite0 ImageNet
   weights, resize 256 / crop 224) on the good training images of ``--data`` (default: the hazelnut toy set in
   ../shared/data), written once to ``benchmarks/.work/serve_load/`` and reused.
2. ``tabad serve MODEL --host 127.0.0.1 --port 0`` in a child process (its log next to the model).
3. Exactly ``--requests`` POST /predict requests (multipart, the real test images of ``--data`` in turn), from
   ``--concurrency`` client threads, each with its own keep-alive connection to 127.0.0.1. Every request has a
   timeout, and the whole run a deadline (``--deadline``): requests not answered by then count as failed, and
   the server is stopped in any case.
4. Latency percentiles (client side: request sent to answer read; server side: the answer's ``elapsed_ms``,
   decode + queue + inference), throughput, failed requests, and whether every image got the same score
   each time, to ``benchmarks/reports/serve_load.{md,json}`` with provenance (model, versions, machine,
   command). Exit status 1 when any request failed.

Usage::

    python benchmarks/serve_load.py                                # fit (once) on hazelnut, 200 requests, 8 clients
    python benchmarks/serve_load.py --model runs/gear.tabad --data data/gear --requests 200 --concurrency 8
    python benchmarks/serve_load.py --render-only                  # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from harness.report import fmt, render_only, table, write_report  # noqa: E402
from harness.sidebyside import machine  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "hazelnut_toy" / "hazelnut"
WORK = HERE / ".work" / "serve_load"
REPORT = HERE / "reports" / "serve_load"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- the model
def shown(path: Path) -> str:
    """``path`` as typed from the repository root (relative when it can be)."""
    path = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            pass
    return str(path)


def fitted_model(args) -> tuple[Path, dict]:
    """The model file, fitted with ``tabad fit``'s defaults when there is none yet; and how it was made."""
    if args.model is not None:
        return Path(args.model), {"fitted_here": False}
    out = WORK / f"{Path(args.data).name}.tabad"
    side = out.with_suffix(".fit.json")
    if out.is_file() and side.is_file():
        return out, json.loads(side.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tabad", "fit", "--data", str(args.data), "--out", str(out)]
    print("fitting:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, timeout=args.deadline)
    info = {"fit_command": f"OMP_NUM_THREADS={args.threads} tabad fit --data {shown(args.data)} --out {shown(out)}",
            "fit_wall_s": round(time.perf_counter() - t0, 1)}
    side.write_text(json.dumps(info) + "\n")
    return out, info


def test_images(data: Path) -> list[Path]:
    root = Path(data) / "test" if (Path(data) / "test").is_dir() else Path(data)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "ground_truth" not in p.parts)
    if not files:
        raise SystemExit(f"no test images under {root}")
    return files


# ----------------------------------------------------------------------------- the server
class Server:
    """``tabad serve`` in a child process on 127.0.0.1; always stopped (context manager)."""

    def __init__(self, model: Path, log: Path, threads: int, max_batch: int, startup_s: float = 180,
                 extra: tuple[str, ...] = ()):
        self.cmd = [sys.executable, "-m", "tabad", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                    "--threads", str(threads), "--max-batch", str(max_batch), "--no-access-log", *extra]
        self.log, self.threads, self.startup_s = log, threads, startup_s
        self.proc = None
        self.host, self.port = "127.0.0.1", None

    def __enter__(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as sink:
            self.proc = subprocess.Popen(self.cmd, stdout=sink, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": str(self.threads)})
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tabad serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            text = self.log.read_text(errors="replace")
            m = re.search(r"on http://127\.0\.0\.1:(\d+)/", text)
            if m and "startup complete" in text:
                self.port = int(m.group(1))
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise SystemExit(f"tabad serve did not start in {self.startup_s} s:\n{self.log.read_text()}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()


# ----------------------------------------------------------------------------- the clients
def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    ctype = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_load(server: Server, images: list[Path], n: int, concurrency: int, timeout: float, deadline_s: float):
    """Send exactly ``n`` requests from ``concurrency`` threads; one record per request."""
    bodies = [multipart(p) for p in images]
    root = os.path.commonpath([str(p.parent) for p in images])
    names = [str(p.relative_to(root)) for p in images]  # test/good/00.jpg and test/colour/00.jpg differ
    local = threading.local()
    stop_at = time.monotonic() + deadline_s

    def one(i: int) -> dict:
        rec = {"i": i, "image": names[i % len(images)], "status": None, "error": None}
        if time.monotonic() > stop_at:
            rec["error"] = "not sent: overall deadline passed"
            return rec
        body, ctype = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            payload = resp.read()
            rec["latency_ms"] = 1000.0 * (time.perf_counter() - t0)
            rec["status"] = resp.status
            if resp.status == 200:
                out = json.loads(payload)
                rec.update(score=out["score"], verdict=out["verdict"], server_ms=out["elapsed_ms"])
            else:
                rec["error"] = payload[:300].decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - counted as a failed request
            rec["error"] = f"{type(exc).__name__}: {exc}"
            local.conn = None
        return rec

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        done, not_done = wait(futures, timeout=deadline_s + timeout)
        for f in not_done:
            f.cancel()
    wall = time.perf_counter() - t0
    records = [f.result() if f in done else {"i": i, "status": None, "error": "no answer before the deadline"}
               for i, f in enumerate(futures)]
    return records, wall


def percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def summarise(records: list[dict], wall: float) -> dict:
    ok = [r for r in records if r.get("status") == 200]
    failed = [r for r in records if r.get("status") != 200]
    by_image: dict[str, list[float]] = {}
    for r in ok:
        by_image.setdefault(r["image"], []).append(r["score"])
    spread = max((max(v) - min(v) for v in by_image.values()), default=None)
    return {
        "requests": len(records), "ok": len(ok), "failed": len(failed),
        "failures": [{k: r.get(k) for k in ("i", "image", "status", "error")} for r in failed[:20]],
        "wall_s": round(wall, 3), "throughput_rps": round(len(ok) / wall, 3) if wall > 0 else None,
        "latency_ms": percentiles([r["latency_ms"] for r in ok]),
        "server_ms": percentiles([r["server_ms"] for r in ok]),
        "score_spread_per_image": spread,
        "verdicts": {v: sum(r["verdict"] == v for r in ok) for v in ("normal", "anomalous")},
    }


# ----------------------------------------------------------------------------- the report
def render(report: dict) -> str:
    s, p, m = report["summary"], report["provenance"], report["model"]
    lat, srv = s["latency_ms"], s["server_ms"]
    rows = [[name, *(fmt(d.get(k), 1) for k in ("p50", "p90", "p99", "mean", "max"))]
            for name, d in (("client latency (ms)", lat), ("server time (ms)", srv))]
    mach = p["machine"]
    lines = [
        "# `tabad serve` load test",
        "",
        f"Generated by `benchmarks/serve_load.py` on {p['date']} ({mach['cpu_model']}, {mach['nproc']} CPUs, "
        f"{mach['mem_total_gb']} GB RAM; server torch threads: {p['server_threads']}; 1-minute load average "
        f"{fmt(p['load_before'], 2)} before, {fmt(p['load_after'], 2)} after).",
        "",
        f"**{s['requests']} requests, {p['concurrency']} concurrent clients, {s['failed']} failed**; "
        f"throughput {fmt(s['throughput_rps'], 2)} requests/s ({fmt(s['wall_s'], 1)} s in all).",
        "",
        *table(["", "p50", "p90", "p99", "mean", "max"], rows, ["---", "--:", "--:", "--:", "--:", "--:"]),
        "",
        "Client latency: from sending the request to reading the whole answer, over a keep-alive connection to "
        "127.0.0.1. Server time: the answer's `elapsed_ms` (decode, wait in the queue, inference). The server "
        f"runs one inference at a time and scores up to {p['max_batch']} waiting images as one batch "
        f"({s.get('server_batches', '–')} batches for {s['ok']} images, warm-up included).",
        "",
        f"Verdicts: {s['verdicts']['anomalous']} anomalous, {s['verdicts']['normal']} normal over "
        f"{p['n_images']} distinct test images sent in turn; largest difference between two scores of the same "
        f"image: {fmt(s['score_spread_per_image'], 7) if s['score_spread_per_image'] is not None else '–'} "
        "(batch composition only).",
        "",
        "## Model",
        "",
        f"- file: `{m['file']}` (sha256 `{m['sha256']}`)",
        f"- method {m['method']}, backbone {m['backbone']}, weights {m['weights_source']} "
        f"(sha256 `{m['weights_sha256']}`), input {m['input_size'][0]}x{m['input_size'][1]}",
        f"- trained {m['created']} on the train split of `{p['data']}` ({m['n_train']} images, {m['n_calibration']} "
        "held out for the thresholds); the requests send its test images",
    ]
    if m.get("fit_command"):
        lines.append(f"- fitted with `{m['fit_command']}`" + (f" ({m['fit_wall_s']} s)" if m.get("fit_wall_s")
                                                                 else ""))
    if s["failures"]:
        lines += ["", "## Failed requests", ""] + [f"- #{f['i']} {f['image']}: {f['status']} {f['error']}"
                                                   for f in s["failures"]]
    env = p["environment"]
    lines += [
        "",
        "## Provenance",
        "",
        f"- command: `{p['command']}`",
        f"- server: `{p['server_command']}`",
        f"- tabad {env['tabad_version']} ({env['git_commit']}), Python {env['python']}, torch {env['torch']}, "
        f"numpy {env['numpy']}; " + ", ".join(f"{k} {v}" for k, v in p["web_stack"].items()),
        f"- machine: {mach['platform']}",
        "",
    ]
    return "\n".join(lines)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def web_stack() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "python-multipart"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="dataset category (its train split fits the model, its test images are sent)")
    ap.add_argument("--model", type=Path, default=None, help="a model file (default: fit one with tabad fit)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    ap.add_argument("--max-batch", type=int, default=8, help="tabad serve --max-batch")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds for all requests together")
    ap.add_argument("--report", type=Path, default=REPORT, help="report stem (.md and .json)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        print(render_only(args.report, render))
        return 0

    from tabad.files import sha256_file
    from tabad.inspection.serve import model_metadata
    from tabad.inspection.pipeline import load_inspection
    from tabad.provenance import environment

    model_path, fit_info = fitted_model(args)
    images = test_images(args.data)
    meta = model_metadata(load_inspection(model_path), model_path)
    load_before = load_average()
    with Server(model_path, WORK / "serve.log", args.threads, args.max_batch) as server:
        records, wall = run_load(server, images, args.requests, args.concurrency, args.timeout, args.deadline)
        health = server.get("/health")
    summary = summarise(records, wall)
    summary["server_batches"] = health.get("batches")
    summary["server_served"] = health.get("served")
    training = meta.get("training") or {}
    report = {
        "summary": summary,
        "model": {"file": shown(model_path), "sha256": sha256_file(model_path), "method": meta["method"],
                  "backbone": meta["backbone"], "weights_source": (meta["weights"] or {}).get("source"),
                  "weights_sha256": (meta["weights"] or {}).get("sha256"), "input_size": meta["input_size"],
                  "thresholds": meta["thresholds"], "created": training.get("created"),
                  "n_train": training.get("n_train"),
                  "n_calibration": training.get("n_calibration"), **fit_info},
        "provenance": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "environment": environment(), "web_stack": web_stack(),
            "command": " ".join(shlex.quote(c) for c in ["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
            "server_command": " ".join(shlex.quote(c) for c in ["tabad", "serve", shown(model_path),
                                                                *server.cmd[5:]]),
            "server_threads": args.threads, "concurrency": args.concurrency, "max_batch": args.max_batch,
            "data": shown(args.data), "n_images": len(images), "load_before": load_before, "load_after": load_average(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    js, md = write_report(report, args.report, render)
    print(render(report))
    print(f"wrote {md} and {js}")
    return 0 if summary["failed"] == 0 and summary["requests"] == args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
