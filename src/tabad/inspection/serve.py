"""``tabad serve``: a fitted model behind a small HTTP API and an offline web page.

Endpoints (all JSON unless noted; errors are ``{"detail": "message"}``):

``POST /predict``
    One image, either as the multipart form field ``file``
    (``curl -F file=@part.png``) or as the raw request body with an ``image/*``
    or ``application/octet-stream`` content type
    (``curl --data-binary @part.png -H 'Content-Type: image/png'``). Answers
    ``score``, ``normalised_score`` (0.5 = the threshold), ``verdict``
    (``anomalous``/``normal``), ``defect_area_px``, ``defect_area_pct`` (of the
    model's input size), ``threshold`` (the raw image threshold),
    ``pixel_threshold``, ``input_size`` ([h, w] of the map and mask),
    ``image_size`` ([h, w] of the upload), ``filename``, ``model_sha256`` and
    ``elapsed_ms``. With ``?overlay=true`` the answer also holds
    ``overlay_png``: the base64 PNG of image | heat map | defect contour at the
    model's input size, as ``tabad predict`` writes it.

    400: a corrupt or truncated image, or a malformed form; 413: an upload over
    ``--max-upload-mb`` (refused from its Content-Length before it is read, and
    enforced while reading when there is none) or an image over
    ``--max-megapixels``; 415: not an image, or a body that is neither a form nor
    an image; 422: no image (the form has no ``file`` field, or the body is
    empty); 503: the queue is full (``Retry-After: 1``).

``GET /health``
    ``{"status": "ok", ...}`` with the queue length and request counts.

``GET /metadata``
    The model: method, backbone, weights (source, sha256), thresholds and how
    they were chosen, training date and data, input size, tabad version, model
    file and sha256.

``GET /``
    A self-contained page (no external scripts, styles or fonts: it works
    offline) to upload an image and see its overlay, verdict, score and defect
    area. ``GET /?example=1`` shows the result on the example image given with
    ``--example IMAGE`` (scored when the server starts; also as JSON at
    ``GET /example``): a quick visual check that the deployed model behaves.

Inference runs in one worker thread, never on the event loop: requests wait in
a FIFO queue (at most ``--max-queue``; more are answered 503) and the worker
scores up to ``--max-batch`` waiting images together, one batch at a time.
Decoding uploads and drawing overlays run in the server's thread pool.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.

import asyncio
import base64
import hashlib
import io
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tabad.errors import DataError, TabadError
from tabad.version import __version__

from tabad.inspection.defaults import SERVE_HOST as DEFAULT_HOST
from tabad.inspection.defaults import SERVE_MAX_BATCH as DEFAULT_MAX_BATCH
from tabad.inspection.defaults import SERVE_MAX_MEGAPIXELS as DEFAULT_MAX_MEGAPIXELS
from tabad.inspection.defaults import SERVE_MAX_QUEUE as DEFAULT_MAX_QUEUE
from tabad.inspection.defaults import SERVE_MAX_UPLOAD_MB as DEFAULT_MAX_UPLOAD_MB
from tabad.inspection.defaults import SERVE_PORT as DEFAULT_PORT

#: Raw bodies accepted besides ``image/*``.
RAW_TYPES = ("application/octet-stream",)
#: The multipart field that holds the image.
FIELD = "file"
_NOT_AN_IMAGE = "not a readable image"  # the start of DataError.problem for an unknown format
#: Magic numbers: a file that starts like an image but cannot be opened is a corrupt image (400), not another
#: kind of file (415). PNG, JPEG, GIF, BMP, TIFF (both byte orders), WebP (RIFF).
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


@dataclass
class ServeConfig:
    model: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    device: str = "auto"
    #: an image scored at start-up and shown by ``GET /?example=1``.
    example: Path | None = None
    #: torch intra-op threads of the inference worker (None: torch's default).
    threads: int | None = None
    access_log: bool = True
    log_level: str = "info"


class UploadError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def require_dependencies() -> None:
    """Raise a :class:`TabadError` that says what to install when the web stack is missing."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise TabadError(f"`tabad serve` needs {', '.join(missing)}: pip install 'tabad[serve]'")


# --------------------------------------------------------------------------- inference queue


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class InferenceQueue:
    """One worker thread that runs every inference: a FIFO queue, batches of what is waiting.

    ``await submit(image)`` returns the :class:`~tabad.inspection.pipeline.Prediction`; it raises
    :class:`UploadError` 503 when ``max_queue`` images are already waiting or being scored. A batch
    that fails is retried image by image, so one bad image fails only its own request.
    """

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE,
                 threads: int | None = None):
        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(1, int(max_queue))
        self.threads = threads
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.pending = 0  # submitted and not yet answered
        self.served = 0
        self.failed = 0
        self.batches = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tabad-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, image: np.ndarray):
        with self._lock:
            if self.pending >= self.max_queue:
                raise UploadError(503, f"the server is busy: {self.pending} images are queued (the limit is "
                                       f"--max-queue {self.max_queue}); retry shortly", {"Retry-After": "1"})
            self.pending += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(image, future, loop))
        return await future

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))  # per thread under OpenMP: set it where inference runs
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            for job, result, error in self._score(batch):
                with self._lock:
                    self.pending -= 1
                    if error is None:
                        self.served += 1
                    else:
                        self.failed += 1
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)

    def _score(self, batch: list[_Job]):
        self.batches += 1
        try:
            preds = self.model.predict([j.image for j in batch], batch_size=len(batch))
            return [(j, p, None) for j, p in zip(batch, preds)]
        except Exception as exc:  # noqa: BLE001 - reported to the client, never fatal to the server
            if len(batch) == 1:
                return [(batch[0], None, exc)]
        return [r for j in batch for r in self._score([j])]


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


# --------------------------------------------------------------------------- reading uploads


#: An oversized upload up to this much larger is read and discarded before the 413, so that clients that send
#: the whole body before reading the answer (urllib, requests) get the 413 instead of a reset connection.
DRAIN_BYTES = 64 * 2**20


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, refused with 413 from its Content-Length or as soon as it grows past ``max_bytes``.

    Nothing over ``max_bytes`` is kept in memory.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    expects_continue = request.headers.get("expect", "").lower() == "100-continue"
    n = None
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {declared!r}") from None
    body = bytearray()
    total = 0
    try:
        if n is not None and n > max_bytes:
            # Refused unread. A client waiting for "100 Continue" (curl) never sends the body; others are sent
            # to the end (up to DRAIN_BYTES) so that they can read the answer.
            if not expects_continue and n <= max_bytes + DRAIN_BYTES:
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > max_bytes + DRAIN_BYTES:
                        break
            raise UploadError(413, _too_large(n, max_bytes))
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                body = None
                if total > max_bytes + DRAIN_BYTES:
                    break
                continue  # read on (discarding) to the end, then answer 413
            body += chunk
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected during the upload") from None
    if body is None:
        raise UploadError(413, _too_large(None, max_bytes))
    return bytes(body)


def _too_large(n: int | None, max_bytes: int) -> str:
    size = "the upload is larger than" if n is None else f"the upload is {n / 2**20:.1f} MB, more than"
    return f"{size} the limit of {max_bytes / 2**20:g} MB (tabad serve --max-upload-mb)"


async def read_image_upload(request, max_bytes: int) -> tuple[bytes, str]:
    """(file bytes, file name) of the image in a request: multipart field ``file`` or a raw image body."""
    from starlette.requests import Request

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes)
    if ctype == "multipart/form-data":
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
        try:
            item = form.get(FIELD)
            if item is None:
                fields = ", ".join(repr(k) for k in form.keys()) or "none"
                raise UploadError(422, f"no image: the form has no field {FIELD!r} (fields sent: {fields}); "
                                       f"send the image as {FIELD}, e.g. curl -F {FIELD}=@part.png")
            if isinstance(item, str):
                raise UploadError(422, f"the form field {FIELD!r} is text, not a file; "
                                       f"e.g. curl -F {FIELD}=@part.png")
            data = await item.read()
            name = item.filename or "upload"
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype in RAW_TYPES or (ctype == "" and body):
        data, name = body, "upload"
    elif ctype == "":
        data, name = b"", "upload"
    else:
        raise UploadError(415, f"unsupported Content-Type {ctype!r}: send the image as the multipart field "
                               f"{FIELD!r} (curl -F {FIELD}=@part.png) or as the raw body with an image/* "
                               "Content-Type (curl --data-binary @part.png -H 'Content-Type: image/png')")
    if not data:
        raise UploadError(422, f"no image: the upload is empty; send it as the multipart field {FIELD!r} "
                               f"(curl -F {FIELD}=@part.png) or as the raw body with an image/* Content-Type")
    return data, name


def decode_upload(data: bytes, name: str, max_pixels: int | None) -> np.ndarray:
    """uint8 RGB (H, W, 3) of an uploaded file; 415 when it is no image, 400 when it is corrupt."""
    from tabad.datasets.images import decode_image

    try:
        return np.array(decode_image(data, name, max_pixels=max_pixels))
    except DataError as exc:
        if exc.problem.startswith(_NOT_AN_IMAGE):
            if data.startswith(_IMAGE_SIGNATURES):
                raise UploadError(400, f"{name}: corrupt image (its header cannot be read)") from None
            raise UploadError(415, f"{name}: not an image (unknown format); send a PNG, JPEG, BMP or TIFF file") \
                from None
        if "pixels, more than" in exc.problem or "too large to decode" in exc.problem:
            raise UploadError(413, f"{exc} (tabad serve --max-megapixels)") from None
        raise UploadError(400, f"{name}: {exc.problem}") from None


def _png_base64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_png(model, image: np.ndarray, pred) -> str:
    """The base64 PNG overlay (image | heat map | defect contour) of one prediction."""
    from tabad.inspection.predict import overlay_image

    pix = model.calibration.pixel
    view = model.view_image(image)
    return _png_base64(overlay_image(view, pred.anomaly_map, pred.mask, pix.value, pix.low, pred.verdict,
                                     pred.normalised_score))


# --------------------------------------------------------------------------- metadata


def _sha256_file(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_metadata(model, model_path: Path | None = None, model_sha256: str | None = None) -> dict:
    """What ``GET /metadata`` answers (from the model file's header; missing facts are null)."""
    header = getattr(model, "header", None) or {}
    source = header.get("model_header") or {}  # an ONNX export keeps its source model's header there
    backbone = header.get("backbone") or source.get("backbone") or {}
    weights = backbone.get("weights") or {}
    training = header.get("training") or source.get("training") or {}
    cal = model.calibration
    geometry = (header.get("inspection") or {}).get("geometry") or header.get("geometry")
    h, w = model.input_size
    return {
        "model_file": None if model_path is None else Path(model_path).name,
        "model_sha256": model_sha256,
        "format": header.get("format"),
        "method": header.get("method"),
        "config": header.get("config"),
        "backbone": backbone.get("arch"),
        "weights": {"source": weights.get("source"), "label": weights.get("label"),
                    "sha256": weights.get("sha256")} if weights else None,
        "thresholds": None if cal is None else cal.to_dict(),
        "input_size": [int(h), int(w)],
        "geometry": geometry,
        "training": {"created": training.get("created"), "data": training.get("data"),
                     "n_train": training.get("n_train"), "n_calibration": training.get("n_calibration"),
                     "seed": training.get("seed"), "validation": training.get("validation")} if training else None,
        "trained_with_tabad": source.get("tabad_version") or header.get("tabad_version"),
        "tabad_version": __version__,
    }


def prediction_record(pred, model, image: np.ndarray, name: str, model_sha256: str | None) -> dict:
    cal = model.calibration
    h, w = model.input_size
    return {
        "filename": name,
        "score": pred.score,
        "normalised_score": pred.normalised_score,
        "verdict": pred.verdict,
        "defect_area_px": pred.defect_area_px,
        "defect_area_pct": pred.defect_area_pct,
        "threshold": cal.image.value,
        "pixel_threshold": cal.pixel.value,
        "input_size": [int(h), int(w)],
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "model_sha256": model_sha256,
    }


# --------------------------------------------------------------------------- the app


def create_app(model, *, model_path: Path | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               max_batch: int = DEFAULT_MAX_BATCH, example: Path | None = None, threads: int | None = None,
               log: Callable[[str], None] = print):
    """The FastAPI app serving ``model`` (an InspectionModel or an ONNX model with the same interface).

    The inference worker starts and stops with the app's lifespan (``with TestClient(app)``, or uvicorn).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if model.calibration is None:
        raise TabadError("this model has no thresholds; make one with `tabad fit`")
    max_bytes = int(max_upload_mb * 2**20)
    max_pixels = None if not max_megapixels else int(max_megapixels * 1e6)
    sha = _sha256_file(model_path)
    meta = model_metadata(model, model_path, sha)
    jobs = InferenceQueue(model, max_batch=max_batch, max_queue=max_queue, threads=threads)
    state: dict[str, Any] = {"example": None, "started": time.time()}

    async def run_prediction(data: bytes, name: str, overlay: bool) -> dict:
        t0 = time.perf_counter()
        image = await run_in_threadpool(decode_upload, data, name, max_pixels)
        try:
            pred = await jobs.submit(image)
        except UploadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UploadError(500, f"inference failed on {name}: {type(exc).__name__}: {exc}") from None
        record = prediction_record(pred, model, image, name, sha)
        if overlay:
            record["overlay_png"] = await run_in_threadpool(overlay_png, model, image, pred)
        record["elapsed_ms"] = round(1000.0 * (time.perf_counter() - t0), 2)
        return record

    @asynccontextmanager
    async def lifespan(app):
        jobs.start()
        try:
            # Warm-up (first calls allocate), and a check that the model runs before the server says it is up.
            h, w = model.input_size
            await jobs.submit(np.full((int(h), int(w), 3), 128, dtype=np.uint8))
            if example is not None:
                try:
                    record = await run_prediction(Path(example).read_bytes(), Path(example).name, overlay=True)
                except UploadError as exc:
                    raise DataError(example, f"cannot use as --example: {exc.detail}") from None
                state["example"] = record
                log(f"example {example}: {record['verdict']}, normalised score {record['normalised_score']:.3f}, "
                    f"defect area {record['defect_area_pct']:.2f} %")
            yield
        finally:
            jobs.stop()

    app = FastAPI(title="tabad serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Anomaly detection on uploaded images; see `tabad serve --help`.")
    app.state.jobs = jobs

    @app.exception_handler(UploadError)
    async def _upload_error(request, exc: UploadError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _any_error(request, exc):  # a bug: answer JSON, keep serving
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    upload_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [FIELD],
                                           "properties": {FIELD: {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/predict", openapi_extra=upload_doc,
              summary="Score one image (multipart field `file` or a raw image body)")
    async def predict(request: Request, overlay: bool = False):
        data, name = await read_image_upload(request, max_bytes)
        return await run_prediction(data, name, overlay)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model_sha256": sha, "queued": jobs.pending, "served": jobs.served,
                "failed": jobs.failed, "batches": jobs.batches, "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/metadata")
    async def metadata():
        return meta

    @app.get("/example")
    async def example_result():
        if state["example"] is None:
            raise UploadError(404, "no example image: start the server with --example IMAGE")
        return state["example"]

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def page(example: bool = False):
        boot = {"metadata": meta, "example": state["example"] if example else None,
                "max_upload_mb": max_upload_mb, "has_example": state["example"] is not None}
        if example and state["example"] is None:
            boot["error"] = "no example image: start the server with --example IMAGE"
        return HTMLResponse(PAGE.replace("__BOOT__", json.dumps(boot).replace("<", "\\u003c")))

    return app


# --------------------------------------------------------------------------- the command


def _bind(host: str, port: int):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise TabadError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                         "(0 picks a free one)") from None


def serve(cfg: ServeConfig, log: Callable[[str], None] = print) -> None:
    """Run ``tabad serve`` until interrupted (Ctrl+C or SIGTERM)."""
    require_dependencies()
    import uvicorn

    from tabad.inspection.predict import load_any_model

    if not Path(cfg.model).is_file():
        raise DataError(cfg.model, "no such model file")
    if cfg.example is not None:
        if not Path(cfg.example).is_file():
            raise DataError(cfg.example, "no such example image (--example)")
        try:
            decode_upload(Path(cfg.example).read_bytes(), str(cfg.example), None)
        except UploadError as exc:
            raise DataError(cfg.example, f"cannot use as --example: {exc.detail}") from None
    model = load_any_model(cfg.model, cfg.device)
    app = create_app(model, model_path=Path(cfg.model), max_upload_mb=cfg.max_upload_mb,
                     max_megapixels=cfg.max_megapixels, max_queue=cfg.max_queue, max_batch=cfg.max_batch,
                     example=cfg.example, threads=cfg.threads, log=log)
    sock = _bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(f"tabad serve: {cfg.model} on http://{shown}:{port}/ (POST /predict, GET /health, /metadata; Ctrl+C stops)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        log(f"note: listening on {host}, reachable from other machines; there is no authentication")
    config = uvicorn.Config(app, log_level=cfg.log_level, access_log=cfg.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------- the page

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tabad inspection</title>
<style>
  :root { --ok: #1b7f3b; --bad: #c0262d; --ink: #1d2330; --muted: #5c6677; --line: #d9dee7; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         background: #f4f6f9; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 24px; align-items: baseline;
           flex-wrap: wrap; }
  header h1 { font-size: 19px; margin: 0; }
  header .model { color: #c5cbd6; font-size: 13px; }
  main { max-width: 1100px; margin: 0 auto; padding: 20px 24px; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
          margin-bottom: 16px; }
  form { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
  #drop { border: 2px dashed var(--line); border-radius: 8px; padding: 14px; flex: 1; min-width: 260px; }
  #drop.over { border-color: #4a7bd0; background: #eef3fc; }
  button { font: inherit; padding: 8px 18px; border-radius: 6px; border: 0; background: #2f5fb3; color: #fff;
           cursor: pointer; }
  button:disabled { background: #9aa6bb; cursor: wait; }
  .hint { color: var(--muted); font-size: 13px; }
  #result { display: none; }
  .verdict { display: inline-block; font-size: 28px; font-weight: 700; letter-spacing: .04em; padding: 4px 18px;
             border-radius: 6px; color: #fff; text-transform: uppercase; }
  .verdict.normal { background: var(--ok); }
  .verdict.anomalous { background: var(--bad); }
  .facts { display: flex; gap: 28px; flex-wrap: wrap; align-items: center; margin-bottom: 12px; }
  .fact .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
  .fact .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .bar { height: 10px; width: 220px; background: linear-gradient(90deg, var(--ok) 0 50%, var(--bad) 50% 100%);
         border-radius: 5px; position: relative; margin-top: 6px; opacity: .85; }
  .bar i { position: absolute; top: -4px; width: 4px; height: 18px; background: var(--ink); border-radius: 2px; }
  #overlay { width: 100%; image-rendering: auto; border-radius: 4px; border: 1px solid var(--line); }
  .panels { display: grid; grid-template-columns: repeat(3, 1fr); color: var(--muted); font-size: 12px;
            text-align: center; margin-top: 4px; }
  #error { display: none; background: #fdecec; border: 1px solid #f1b4b4; color: #8a1c1c; }
  table { border-collapse: collapse; font-size: 13px; }
  td { padding: 2px 14px 2px 0; vertical-align: top; }
  td:first-child { color: var(--muted); }
  code { font-size: 12px; }
</style>
</head>
<body>
<header><h1>tabad inspection</h1><span class="model" id="model"></span></header>
<main>
  <div class="card">
    <form id="upload" action="/predict?overlay=true" method="post" enctype="multipart/form-data">
      <div id="drop"><input type="file" name="file" id="file" accept="image/*">
        <div class="hint">or drop an image here (at most <span id="maxmb"></span> MB)</div></div>
      <button type="submit" id="go">Inspect</button>
    </form>
  </div>
  <div class="card" id="error"></div>
  <div class="card" id="result">
    <div class="facts">
      <span class="verdict" id="verdict"></span>
      <div class="fact"><div class="k">normalised score</div><div class="v" id="nscore"></div>
        <div class="bar" title="0.5 is the threshold"><i id="marker"></i></div></div>
      <div class="fact"><div class="k">raw score / threshold</div><div class="v" id="score"></div></div>
      <div class="fact"><div class="k">defect area</div><div class="v" id="area"></div></div>
    </div>
    <div class="hint" id="caption"></div>
    <img id="overlay" alt="image, heat map and defect contour">
    <div class="panels"><span>image (model input)</span><span>heat map (mid-scale = pixel threshold)</span>
      <span>defect contour</span></div>
  </div>
  <div class="card"><table id="meta"></table>
    <p class="hint">API: <code>curl -F file=@part.png '<span id="origin">http://HOST</span>/predict?overlay=true'</code>,
      <code>GET /health</code>, <code>GET /metadata</code>, <code>GET /?example=1</code>.</p></div>
</main>
<script>
const BOOT = __BOOT__;
const $ = (id) => document.getElementById(id);
const m = BOOT.metadata;
const fmt = (x, d) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
$("maxmb").textContent = BOOT.max_upload_mb;
$("origin").textContent = location.origin;
$("model").textContent = [m.model_file, m.method, m.backbone, m.weights && m.weights.source]
  .filter(Boolean).join(" · ");
const rows = [["method", m.method], ["backbone", m.backbone],
  ["weights", m.weights ? `${m.weights.source} (sha256 ${String(m.weights.sha256 || "").slice(0, 12)}…)` : null],
  ["image threshold", m.thresholds ? `${fmt(m.thresholds.image.value, 4)} (${m.thresholds.image.rule}, ` +
    `target ${m.thresholds.image.target})` : null],
  ["pixel threshold", m.thresholds ? fmt(m.thresholds.pixel.value, 4) : null],
  ["input size", m.input_size.join(" × ")], ["trained", m.training && m.training.created],
  ["model sha256", m.model_sha256 && m.model_sha256.slice(0, 16) + "…"], ["tabad", m.tabad_version]];
for (const [k, v] of rows) {
  if (v === null || v === undefined) continue;
  const tr = document.createElement("tr");
  tr.innerHTML = "<td></td><td></td>";
  tr.children[0].textContent = k; tr.children[1].textContent = v;
  $("meta").appendChild(tr);
}
function showError(msg) { $("error").textContent = msg; $("error").style.display = "block"; }
function show(r, caption) {
  $("error").style.display = "none";
  $("result").style.display = "block";
  const v = $("verdict"); v.textContent = r.verdict; v.className = "verdict " + r.verdict;
  $("nscore").textContent = fmt(r.normalised_score, 3);
  $("marker").style.left = `calc(${Math.min(1, Math.max(0, r.normalised_score)) * 100}% - 2px)`;
  $("score").textContent = `${fmt(r.score, 3)} / ${fmt(r.threshold, 3)}`;
  $("area").textContent = `${fmt(r.defect_area_pct, 2)} % (${r.defect_area_px} px)`;
  $("caption").textContent = `${caption}: ${r.filename}, ${r.image_size[1]}×${r.image_size[0]} px` +
    (r.elapsed_ms !== undefined ? `, ${fmt(r.elapsed_ms, 0)} ms` : "");
  $("overlay").src = "data:image/png;base64," + r.overlay_png;
}
async function send(file) {
  if (!file) { showError("choose an image first"); return; }
  $("go").disabled = true;
  try {
    const body = new FormData(); body.append("file", file, file.name);
    const resp = await fetch("/predict?overlay=true", { method: "POST", body });
    const r = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
    if (!resp.ok) showError(`${resp.status}: ${typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail)}`);
    else show(r, "uploaded");
  } catch (e) { showError("request failed: " + e); }
  finally { $("go").disabled = false; }
}
$("upload").addEventListener("submit", (e) => { e.preventDefault(); send($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  send(e.dataTransfer.files[0]); });
if (BOOT.example) show(BOOT.example, "example image (--example)");
if (BOOT.error) showError(BOOT.error);
</script>
</body>
</html>
"""
