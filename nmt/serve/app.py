"""The FastAPI application: routes, refusals as one-line JSON, metrics of every answer.

``State`` is what the routes share. The model loads in a thread after the port opens (``server.py``), so
``/health`` answers 503 ``loading`` until ``State.engine`` and ``State.batcher`` are set, and ``ready`` after.
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import Request

from nmt.decode.config import DecodeConfig
from nmt.inspect.render.page import KINDS, facts_html, grids_html
from nmt.serve import api
from nmt.serve.api import ApiError
from nmt.serve.batcher import Batcher, Closed, QueueFull
from nmt.serve.config import Limits
from nmt.serve.engine import Engine, Output, request_decode
from nmt.serve.metrics import Metrics
from nmt.serve.page import page_html

DISCONNECTED = 499  # nginx's code for "the client closed the request": never sent, only counted


@dataclass
class State:
    """What the routes share; ``engine`` and ``batcher`` are None until the model is loaded."""

    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: Batcher | None = None
    stopping: bool = False
    on_shutdown: Callable[[], None] = lambda: None  # drains the batcher; called by the lifespan's end

    def serving(self) -> tuple[Engine, Batcher]:
        if self.stopping:
            raise ApiError(503, "stopping", "server", "stopping", retry_after=5)
        if self.engine is None or self.batcher is None:
            raise ApiError(503, "loading", "server", "the model is loading", retry_after=2)
        return self.engine, self.batcher


Work = Callable[[Request], Awaitable[Response]]


def _body(model: type[api.TranslateRequest] | type[api.AttentionRequest]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _counted(metrics: Metrics, endpoint: str) -> Callable[[Work], Work]:
    """A route's body, with refusals as one-line JSON, and every answer counted and timed."""

    def wrap(work: Work) -> Work:
        @functools.wraps(work)
        async def route(request: Request) -> Response:
            start = time.monotonic()
            try:
                response = await work(request)
            except ApiError as err:
                metrics.errors.labels(err.kind).inc()
                headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
                response = _json(err.status, err.body(), headers)
            metrics.answered(endpoint, response.status_code, time.monotonic() - start)
            return response

        return route

    return wrap


async def _read(state: State, request: Request, model: type[api.TranslateRequest] | type[api.AttentionRequest]) -> tuple[Engine, Batcher, Any]:
    """The engine and batcher (503 until loaded), and the request's body checked as ``model``."""
    engine, batcher = state.serving()
    return engine, batcher, api.parse(await api.read_body(request, state.limits.max_body_bytes), model)


async def _decode(metrics: Metrics, request: Request, batcher: Batcher, sources: list, decode: DecodeConfig) -> list[list[Output]] | None:
    """The batcher's answer for ``sources``; None when the client left first (its waiting segments are dropped)."""
    try:
        job = batcher.submit(sources, decode)
    except QueueFull as err:
        raise ApiError(503, "queue_full", "server", f"the queue is full ({batcher.max_queue} segments)", err.retry_after) from None
    except Closed:
        raise ApiError(503, "stopping", "server", "stopping", retry_after=5) from None
    result = asyncio.wrap_future(job.future)
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not result.done():
        batcher.cancel(job)
        metrics.errors.labels("disconnected").inc()
        return None
    try:
        return result.result()
    except Exception as err:  # noqa: BLE001 - the model failed on this batch: a 500 for these requests only
        raise ApiError(500, "internal", "server", f"decoding failed: {type(err).__name__}: {err}".replace("\n", " ")) from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(state: State) -> FastAPI:
    """The application over ``state``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.stopping = True  # uvicorn has stopped accepting and the requests in flight are answered
        await asyncio.to_thread(state.on_shutdown)

    app = FastAPI(title="nmt serve", summary="Neural machine translation (the Transformer of Vaswani et al. 2017)",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # the docs pages load scripts from the network
    metrics = state.metrics

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown paths and methods get the API's one-line error too."""
        metrics.errors.labels("not_found" if exc.status_code == 404 else "method").inc()
        return _json(exc.status_code, {"error": f"{request.url.path}: {exc.detail}", "field": "path"}, getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, summary="The page: type a sentence, see its translation and attention")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health", summary="ready (200) once the model is loaded; loading or stopping (503)")
    async def health() -> JSONResponse:
        try:
            engine, _ = state.serving()
        except ApiError as err:
            return _json(503, {"status": err.kind}, {"Retry-After": str(err.retry_after)})
        d = engine.decode
        return _json(200, {"status": "ready", "model": engine.description, "source_language": engine.src_lang,
                           "target_language": engine.tgt_lang, "attention": engine.has_attention,
                           "decode": {"beam": d.beam, "lenpen": d.lenpen, "penalty": d.penalty, "stop": d.stop,
                                      "max_len_a": d.max_len_a, "max_len_b": d.max_len_b, "max_tokens": d.max_tokens}})

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/v1/translate", summary="Translate segments", response_model=None, responses={200: {"model": api.TranslateResponse}, **api.ERRORS},
              openapi_extra=_body(api.TranslateRequest))
    @_counted(metrics, "translate")
    async def translate(request: Request) -> Response:
        engine, batcher, req = await _read(state, request, api.TranslateRequest)
        if not req.text:
            raise ApiError(422, "empty", "text", "no segments; send at least one")
        beam, nbest = api.check_options(req, engine, state.limits)
        decode = request_decode(engine, beam, nbest)
        sources = api.tokenize(req.text, engine, state.limits)
        found = await _decode(metrics, request, batcher, [s for s in sources if s is not None], decode)
        if found is None:
            return Response(status_code=DISCONNECTED)
        metrics.segments.labels("empty").inc(sum(s is None for s in sources))
        hyps = iter(found)
        entries = [api.translation([] if s is None else next(hyps), decode.nbest, req.scores) for s in sources]
        return _json(200, {"translations": entries})

    @app.post("/v1/attention", summary="Translate one segment and draw its attention (the page's request)", response_model=None,
              responses={200: {"model": api.AttentionResponse}, **api.ERRORS}, openapi_extra=_body(api.AttentionRequest))
    @_counted(metrics, "attention")
    async def attention(request: Request) -> Response:
        engine, batcher, req = await _read(state, request, api.AttentionRequest)
        if not req.text.strip():
            raise ApiError(422, "empty", "text", "empty; type a sentence")
        source = api.tokenize([req.text], engine, state.limits)[0]
        found = await _decode(metrics, request, batcher, [source], engine.decode)
        if found is None:
            return Response(status_code=DISCONNECTED)
        best = found[0][0]
        body: dict[str, Any] = {"translation": best.text, "score": best.score, "facts_html": "", "maps_html": None, "note": None}
        if engine.has_attention:
            body.update(await asyncio.to_thread(_draw, engine, source, best))
        else:
            body["note"] = "Attention maps need the PyTorch checkpoint; this server runs a CTranslate2 model."
        return _json(200, body)

    return app


def _draw(engine: Engine, source: list, best: Output) -> dict[str, Any]:
    """The attention pass and its HTML, off the event loop: the maps of ``nmt attend``'s page."""
    att = engine.attention(source, best)
    facts = [("source pieces", " ".join(att.source)), ("target pieces", " ".join(att.target_out)),
             ("score", f"log-probability {att.logprob:.4f}, search score {best.score:.4f} (length-penalised)")]
    return {"facts_html": facts_html(facts), "maps_html": grids_html(att.heatmaps(), att.heatmap("cross"))}


PAGE = page_html(list(KINDS), KINDS)
