"""``tabad serve``: the HTTP API on a real server (a ``tabad serve`` subprocess on 127.0.0.1), its errors,
its page, and its queue (one inference at a time, off the event loop) with an in-process server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from tabad.inspection.fit import FitConfig, fit_model  # noqa: E402
from tabad.inspection.pipeline import Calibration, load_inspection  # noqa: E402
from tabad.inspection.serve import create_app  # noqa: E402
from tabad.inspection.thresholds import Threshold  # noqa: E402

SMALL = dict(backbone="resnet18", weights="random:0", resize=48, crop=40, method="padim",
             method_options={"n_features": 20}, progress=False)
HAZELNUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "hazelnut_toy" / "hazelnut"
MAX_UPLOAD_MB = 1.0
STARTUP_S = 90


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _part(seed: int, defect: bool = False, size=(60, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), 120.0) + rng.normal(0, 4, (*size, 3))
    if defect:
        img[20:36, 24:44] = 250
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_file(tiny_mvtec, tmp_path_factory) -> Path:
    return fit_model(FitConfig(data=tiny_mvtec / "obj", out=tmp_path_factory.mktemp("serve") / "m.tabad", **SMALL),
                     log=lambda *_: None)


@pytest.fixture(scope="module")
def example_image(tiny_mvtec) -> Path:
    return tiny_mvtec / "obj" / "test" / "square" / "000.png"


@pytest.fixture(scope="module")
def server(model_file, example_image, tmp_path_factory):
    """``tabad serve`` in a subprocess on 127.0.0.1 (a free port), stopped after the module's tests."""
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    cmd = [sys.executable, "-m", "tabad", "serve", str(model_file), "--port", "0", "--host", "127.0.0.1",
           "--max-upload-mb", str(MAX_UPLOAD_MB), "--example", str(example_image), "--threads", "1",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        url = None
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tabad serve exited with {proc.returncode}:\n{log.read_text()}")
            if url is None:
                m = re.search(r"on (http://127\.0\.0\.1:\d+)/", log.read_text())
                url = m.group(1) if m else None
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
            time.sleep(0.2)
        else:
            pytest.fail(f"tabad serve did not start in {STARTUP_S} s:\n{log.read_text()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode in (0, -15), log.read_text()  # graceful shutdown on SIGTERM


def _post(url, data: bytes, name="part.png", ctype="image/png", **kw):
    return httpx.post(f"{url}/predict", files={"file": (name, data, ctype)}, timeout=60, **kw)


# --------------------------------------------------------------------------- the API on a real server


def test_predict_matches_the_model_in_process(server, model_file):
    image = _part(0, defect=True)
    r = _post(server, _png(image))
    assert r.status_code == 200, r.text
    got = r.json()
    assert {"score", "normalised_score", "verdict", "defect_area_px", "defect_area_pct", "threshold"} <= set(got)
    model = load_inspection(model_file)
    want = model.predict([image])[0]
    assert got["score"] == pytest.approx(want.score, rel=1e-4, abs=1e-5)
    assert got["normalised_score"] == pytest.approx(want.normalised_score, abs=1e-4)
    assert got["verdict"] == want.verdict
    assert got["threshold"] == pytest.approx(model.calibration.image.value)
    assert got["image_size"] == [60, 72] and got["input_size"] == [40, 40]
    assert got["filename"] == "part.png" and "overlay_png" not in got


def test_raw_body_and_overlay(server):
    image = _part(1)
    r = httpx.post(f"{server}/predict?overlay=true", content=_png(image), headers={"Content-Type": "image/png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    overlay = np.array(Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png"]))))
    assert overlay.shape == (40, 3 * 40, 3)  # image | heat map | contour at the model's input size
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    r = httpx.post(f"{server}/predict", content=jpeg.getvalue(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200 and r.json()["verdict"] in ("normal", "anomalous")


@pytest.mark.skipif(not HAZELNUT.is_dir(), reason="../shared/data/hazelnut_toy is not on this machine")
def test_real_images(server):
    files = sorted((HAZELNUT / "test" / "good").glob("*.jpg"))[:2]
    files += sorted((HAZELNUT / "test" / "colour").glob("*.jpg"))[:2]
    assert files
    for f in files:
        r = _post(server, f.read_bytes(), name=f.name, ctype="image/jpeg")
        assert r.status_code == 200, (f, r.text)
        assert r.json()["image_size"] == list(np.array(Image.open(f)).shape[:2])


def _chunks(data: bytes, n: int = 65536):
    for i in range(0, len(data), n):
        yield data[i : i + n]


def test_bad_requests_are_4xx_with_a_message(server, tmp_path):
    png = _png(_part(2))
    big = os.urandom(int(MAX_UPLOAD_MB * 2**20) + 4096)
    cases = [
        (_post(server, png[: len(png) // 2]), 400, "truncated or corrupt"),  # a corrupt (truncated) PNG
        (_post(server, b"not an image, just text\n", name="notes.txt", ctype="text/plain"), 415, "not an image"),
        (_post(server, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, name="bad.png"), 400, "bad.png"),  # PNG signature only
        (httpx.post(f"{server}/predict", files={"other": ("p.png", png, "image/png")}), 422, "no field 'file'"),
        (httpx.post(f"{server}/predict", data={"file": "text"}, files={"x": ("p.png", b"x", "image/png")}), 422,
         "is text, not a file"),
        (httpx.post(f"{server}/predict"), 422, "no image"),
        (httpx.post(f"{server}/predict", content=png, headers={"Content-Type": "text/plain"}), 415,
         "Content-Type"),
        (_post(server, big), 413, f"limit of {MAX_UPLOAD_MB:g} MB"),  # refused from its Content-Length
        (httpx.post(f"{server}/predict", content=_chunks(big), headers={"Content-Type": "image/png"}), 413,
         f"limit of {MAX_UPLOAD_MB:g} MB"),  # chunked: no Content-Length, refused while reading
        (httpx.post(f"{server}/predict?overlay=maybe", files={"file": ("p.png", png, "image/png")}), 422,
         "overlay"),
    ]
    for i, (r, status, words) in enumerate(cases):
        assert r.status_code == status, (i, r.status_code, r.text)
        assert words in json.dumps(r.json()["detail"]), (i, r.text)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"  # still serving


def test_oversized_upload_through_urllib(server):
    """A client that sends its whole body before reading (urllib) still gets the 413, not a reset."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{server}/predict", data=os.urandom(int(1.5 * MAX_UPLOAD_MB * 2**20)),
                                 headers={"Content-Type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 413 and b"max-upload-mb" in info.value.read()


def test_health_and_metadata(server, model_file):
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "ok" and h["queued"] == 0
    m = httpx.get(f"{server}/metadata").json()
    header = load_inspection(model_file).header
    assert m["method"] == "padim" and m["backbone"] == "resnet18"
    assert m["weights"]["sha256"] == header["backbone"]["weights"]["sha256"] and m["weights"]["source"] == "random:0"
    assert m["thresholds"] == header["inspection"]["calibration"]
    assert m["training"]["created"] == header["training"]["created"]
    assert m["input_size"] == [40, 40] and m["tabad_version"] and m["model_file"] == "m.tabad"
    assert len(m["model_sha256"]) == 64 and m["model_sha256"] == h["model_sha256"]


def test_page_is_offline_and_has_the_form(server, example_image):
    html = httpx.get(f"{server}/").text
    assert "<form" in html and 'name="file"' in html and 'type="file"' in html and "/predict" in html
    # Self-contained: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
    assert '"example": null' in html
    example = httpx.get(f"{server}/example").json()
    assert example["filename"] == example_image.name and example["overlay_png"]
    page = httpx.get(f"{server}/?example=1").text
    assert example["overlay_png"] in page and f'"verdict": "{example["verdict"]}"' in page


def test_concurrent_requests_are_all_answered(server):
    images = [_png(_part(10 + i, defect=i % 2 == 1)) for i in range(4)]
    before = httpx.get(f"{server}/health").json()["served"]

    def one(i):
        return _post(server, images[i % 4], name=f"{i}.png")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert [r.status_code for r in answers] == [200] * 24
    scores = {}
    for i, r in enumerate(answers):  # the same image scores the same, whatever batch it was in
        scores.setdefault(i % 4, []).append(r.json()["score"])
    for values in scores.values():
        assert max(values) - min(values) < 1e-4 * max(1.0, abs(values[0]))
    assert httpx.get(f"{server}/health").json()["served"] == before + 24


# --------------------------------------------------------------------------- the command


def test_help_teaches_and_does_not_import_torch():
    code = ("import sys\nfrom tabad.cli import main\ntry:\n    main(['serve', '--help'])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "curl -F file=@" in proc.stdout and "127.0.0.1" in proc.stdout and "--max-upload-mb" in proc.stdout


def test_missing_model_and_busy_port_are_exit_2(model_file, tmp_path, capsys):
    from tabad.cli import main

    assert main(["serve", str(tmp_path / "nope.tabad")]) == 2
    assert "nope.tabad" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(model_file), "--port", str(port), "--device", "cpu"]) == 2
    assert "cannot listen" in capsys.readouterr().err


# --------------------------------------------------------------------------- the queue, in process


class SlowModel:
    """A stand-in model: takes ``delay`` s per batch, records how many batches ran at once."""

    def __init__(self, delay: float = 0.3, fail_on_red: bool = False):
        t = Threshold(1.0, "fpr", 0.0, 0.01, 10, 0.0)
        self.calibration = Calibration(t, t)
        self.input_size = (8, 8)
        self.header = {"method": "slow", "backbone": None}
        self.delay, self.fail_on_red = delay, fail_on_red
        self.running = self.most_at_once = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def predict(self, images, batch_size=8):
        from tabad.inspection.pipeline import Prediction

        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            self.batches.append(len(images))
            out = []
            for a in images:
                if self.fail_on_red and a[0, 0, 0] == 255 and a[0, 0, 1] == 0:
                    raise RuntimeError("red images break this model")
                s = float(a.mean()) / 255.0
                out.append(Prediction(None, s, s, "anomalous" if s > 1.0 else "normal", 0, 0.0,
                                      np.zeros(self.input_size, np.float32), np.zeros(self.input_size, np.uint8)))
            return out
        finally:
            with self._lock:
                self.running -= 1

    def view_image(self, image):
        return np.zeros((*self.input_size, 3), np.uint8)


@contextlib.contextmanager
def running(app):
    """``app`` under uvicorn in a thread, on 127.0.0.1 at a free port; always stopped."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def test_one_inference_at_a_time_and_the_event_loop_stays_free():
    model = SlowModel(delay=0.6)
    with running(create_app(model, max_batch=2, log=lambda *_: None)) as url:
        png = _png(_part(0, size=(16, 16)))
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(_post, url, png) for _ in range(6)]
            time.sleep(0.3)  # inference is running now
            t0 = time.perf_counter()
            health = httpx.get(f"{url}/health", timeout=10)
            health_s = time.perf_counter() - t0
            answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * 6
    assert health.status_code == 200 and health_s < 0.5, health_s  # not stuck behind a 0.6 s batch
    assert health.json()["queued"] >= 1  # answered while images were waiting or being scored
    assert model.most_at_once == 1
    assert max(model.batches) <= 2 and sum(model.batches) == 6 + 1  # + the warm-up image


def test_full_queue_is_503_and_a_failing_image_fails_alone():
    model = SlowModel(delay=0.3, fail_on_red=True)
    with running(create_app(model, max_queue=2, max_batch=4, log=lambda *_: None)) as url:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _post(url, _png(_part(0, size=(16, 16)))), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "--max-queue" in busy.json()["detail"]
        assert httpx.get(f"{url}/health").json()["status"] == "ok"

    model = SlowModel(delay=0.3, fail_on_red=True)
    with running(create_app(model, max_batch=4, log=lambda *_: None)) as url:
        red = np.zeros((16, 16, 3), np.uint8)
        red[..., 0] = 255
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(_post, url, _png(a)) for a in (_part(1, size=(16, 16)), red,
                                                                  _part(2, size=(16, 16)))]
            ok1, bad, ok2 = (f.result() for f in futures)
        assert ok1.status_code == 200 and ok2.status_code == 200
        assert bad.status_code == 500 and "red images break this model" in bad.json()["detail"]
        assert httpx.get(f"{url}/health").json()["failed"] == 1


def test_testclient_answers_like_the_server(model_file):
    from fastapi.testclient import TestClient

    model = load_inspection(model_file)
    image = _part(3, defect=True)
    with TestClient(create_app(model, model_path=model_file, log=lambda *_: None)) as client:
        r = client.post("/predict", files={"file": ("p.png", _png(image), "image/png")})
        assert r.status_code == 200
        assert r.json()["verdict"] == model.predict([image])[0].verdict
        assert client.get("/example").status_code == 404
        assert "no example image" in client.get("/?example=1").text


def test_an_onnx_export_serves_like_its_model(model_file, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("tabad.inspection.export")
    from fastapi.testclient import TestClient

    from tabad.inspection.predict import load_any_model

    onnx_file = export.export_onnx(model_file, tmp_path / "m.onnx", log=lambda *_: None)
    image = _part(4, defect=True)
    want = load_inspection(model_file).predict([image])[0]
    with TestClient(create_app(load_any_model(onnx_file), model_path=onnx_file, log=lambda *_: None)) as client:
        r = client.post("/predict?overlay=true", files={"file": ("p.png", _png(image), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(want.score, rel=1e-3, abs=1e-4)
        assert r.json()["verdict"] == want.verdict and r.json()["overlay_png"]
        m = client.get("/metadata").json()
        assert m["method"] == "padim" and m["backbone"] == "resnet18" and m["input_size"] == [40, 40]
        assert m["weights"]["sha256"] and m["training"]["created"] and m["model_file"] == "m.onnx"


def test_committed_load_report_rerenders():
    stem = Path(__file__).resolve().parents[2] / "benchmarks" / "reports" / "serve_load"
    if not stem.with_suffix(".json").is_file():
        pytest.skip("no committed load-test report")
    sys.path.insert(0, str(stem.parents[1]))
    try:
        import serve_load
    finally:
        sys.path.remove(str(stem.parents[1]))
    report = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert report["summary"]["failed"] == 0 and report["summary"]["requests"] == 200
    assert serve_load.render(report) == stem.with_suffix(".md").read_text(encoding="utf-8")
