"""The JSON of the API, and how a request body becomes checked segments or a one-line error naming the field.

The body is read by hand, not by FastAPI's parameter binding, so that every refusal is ours: a body over the
limit stops being read at the limit (413), invalid UTF-8 and malformed JSON say where (400), and a value of the
wrong type or out of range names its field (``text[3]``, ``beam``; 422). The pydantic models below validate
(strictly: ``"4"`` is not a beam) and describe the API in ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request

from nmt.serve.config import Limits
from nmt.serve.engine import Engine, Output


class ApiError(Exception):
    """A refusal: HTTP ``status``, the metrics' ``kind``, the ``field`` at fault and a one-line ``message``."""

    def __init__(self, status: int, kind: str, field: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.kind, self.field, self.message, self.retry_after = status, kind, field, message, retry_after

    def body(self) -> dict[str, str]:
        return {"error": f"{self.field}: {self.message}", "field": self.field}


class TranslateRequest(BaseModel):
    """``POST /v1/translate``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: list[str] = Field(description="The segments, each translated as nmt translate translates one line (line breaks "
                                        "inside a segment count as spaces); an empty segment gets an empty translation.")
    beam: int | None = Field(None, description="Beam size for this request [default: the server's].")
    nbest: int | None = Field(None, description="Also give the N best translations of each segment (N ≤ beam).")
    scores: bool = Field(False, description="Also give each translation's length-penalised log-probability.")


class Hypothesis(BaseModel):
    text: str
    score: float


class Translation(BaseModel):
    text: str = Field(description="The best translation, exactly what nmt translate prints for the segment.")
    score: float | None = Field(None, description="Its length-penalised log-probability (with scores or nbest).")
    nbest: list[Hypothesis] | None = Field(None, description="The N best, best first (with nbest).")


class TranslateResponse(BaseModel):
    translations: list[Translation] = Field(description="One per segment, in the request's order.")


class AttentionRequest(BaseModel):
    """``POST /v1/attention``: the page's request."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(description="One segment.")


class AttentionResponse(BaseModel):
    translation: str
    score: float | None
    facts_html: str = Field(description="The source and target pieces and scores, as nmt attend's page lists them.")
    maps_html: str | None = Field(description="Every attention map as nmt attend's page draws it (null: the engine has none).")
    note: str | None = None


class ErrorResponse(BaseModel):
    error: str = Field(description="One line: the field, a colon, what is wrong with it.")
    field: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "Invalid UTF-8, malformed JSON or an empty body.", 413: "The body is over the limit, or holds too many segments.",
    422: "A field of the wrong type or out of range (its name is in the error).",
    503: "The model is loading, the server is stopping, or the queue is full (see Retry-After)."}.items()}


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", "body", f"{int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", "body", f"over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client left half-way through its body: nothing to answer, nothing queued
        raise ApiError(499, "disconnected", "body", "the client left before its body was read") from None
    return b"".join(chunks)


def parse(body: bytes, model: type[BaseModel]) -> Any:
    """``body`` validated as ``model``; ApiError naming the field otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, "utf8", "body", f"not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start})") from None
    if not text.strip():
        raise ApiError(400, "empty", "body", 'empty; send a JSON object such as {"text": ["Hello."]}')
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        first = min(err.errors(), key=lambda e: e["type"] != "missing")  # "text: Field required" before "txt: Extra inputs"
        if first["type"] == "json_invalid":
            raise ApiError(400, "json", "body", first["msg"].replace("\n", " ")) from None
        where = field_name(first["loc"]) or "body"
        raise ApiError(422, "type", where, first["msg"].replace("\n", " ")) from None


def field_name(loc: Sequence[int | str]) -> str:
    """pydantic's location as the client wrote it: ('text', 3) → text[3]."""
    return "".join(f"[{part}]" if isinstance(part, int) else (f".{part}" if i else str(part)) for i, part in enumerate(loc))


def check_options(req: TranslateRequest, engine: Engine, limits: Limits) -> tuple[int | None, int | None]:
    """The request's beam and n-best size, checked against the server's limits and the engine."""
    if req.beam is not None and not 1 <= req.beam <= limits.max_beam:
        raise ApiError(422, "type", "beam", f"must be between 1 and {limits.max_beam}, not {req.beam}")
    beam = engine.decode.beam if req.beam is None else req.beam
    if req.nbest is not None and not 1 <= req.nbest <= beam:
        raise ApiError(422, "type", "nbest", f"must be between 1 and the beam size {beam}, not {req.nbest}")
    if not engine.has_scores and (req.scores or (req.nbest or 1) > 1):
        raise ApiError(422, "unsupported", "nbest" if (req.nbest or 1) > 1 else "scores", "not available with a CTranslate2 model")
    return req.beam, req.nbest


def tokenize(texts: list[str], engine: Engine, limits: Limits, field: str = "text") -> list[Sequence | None]:
    """Each segment's tokens, or None for an empty one (answered empty, as ``nmt translate`` answers an
    empty line, without the model); ApiError naming the first segment over a limit."""
    if len(texts) > limits.max_segments:
        raise ApiError(413, "too_many_segments", field, f"{len(texts)} segments; the limit is {limits.max_segments} a request")
    out: list[Sequence | None] = []
    for i, text in enumerate(texts):
        where = f"{field}[{i}]"
        if len(text) > limits.max_segment_chars:
            raise ApiError(422, "segment_too_long", where, f"{len(text)} characters; the limit is {limits.max_segment_chars}")
        if not text.strip():
            out.append(None)
            continue
        ids = engine.tokenize(text)
        if len(ids) > engine.max_source_tokens:
            raise ApiError(422, "segment_too_long", where, f"{len(ids)} tokens; the model takes at most {engine.max_source_tokens}")
        out.append(ids)
    return out


def translation(hyps: list[Output], nbest: int, scores: bool) -> dict[str, Any]:
    """One segment's entry of the answer; no hypothesis (an empty segment) reads as ``nmt translate``'s
    empty line: empty text, score 0."""
    if not hyps:
        hyps = [Output("", 0.0)] * nbest
    best = hyps[0]
    entry: dict[str, Any] = {"text": best.text}
    if scores or nbest > 1:
        entry["score"] = best.score
    if nbest > 1:
        entry["nbest"] = [{"text": h.text, "score": h.score} for h in hyps[:nbest]]
    return entry
