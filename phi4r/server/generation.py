"""POST /v1/chat/completions and /v1/completions: request -> engine requests -> OpenAI responses.

Streaming is Server-Sent Events in OpenAI's chunk format. Chat chunks carry the thinking as
`delta.reasoning_content` (and vLLM's newer `delta.reasoning`, same text) and the answer as
`delta.content`; completions stream the raw text, `<think>` included, as vLLM does without a
reasoning parser.

Content streams as soon as it follows a `</think>` ("eager", the default). The final split cuts at
the LAST `</think>`, so when a later one arrives the stream corrects itself with a chunk whose delta
holds only the phi4r extension `"phi4r_reclassify": {"content_chars": N, "joiner": "</think>"}`:
the N characters (code points) of content streamed so far for that choice, all of it, are reasoning:
append joiner + that content to the reasoning and empty the content. Then the reasoning continues.
Clients that ignore the field still get every token once. "hold" (server option, or the request's
`reasoning_stream`) sends content only once it is certain, usually at the end.
"""
from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..reasoning import THINK_END, HoldBack
from ..sampling import SamplingParams
from .errors import APIError
from .jobs import Job
from .protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from .runner import EngineFailure

log = logging.getLogger("phi4r.server")
router = APIRouter()
# nginx's "client closed request": never seen by the client, but /metrics counts it apart from errors.
CLIENT_GONE = Response(status_code=499)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    server = request.app.state.server
    _check(body, server)
    messages = [m.model_dump(include={"role", "content"}) for m in body.messages]  # reasoning is not sent back
    try:
        prompt_ids = await asyncio.to_thread(server.tokenizer.encode_chat, messages)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from e
    job = _start(server, body, [(None, prompt_ids)], "chatcmpl", "messages")
    if body.stream:
        return EventStream(_chat_events(job, body, server), on_close=job.close)
    if not await _collect(job, request):
        return CLIENT_GONE
    choices = [{"index": i, "message": {"role": "assistant", "content": o.content, "reasoning_content": o.reasoning,
                                        "reasoning": o.reasoning, "tool_calls": []},
                "logprobs": None, "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
               for i, o in enumerate(job.outputs())]
    return {"id": job.id, "object": "chat.completion", "created": job.created, "model": server.model_name,
            "choices": choices, "usage": job.usage(reasoning=True)}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    server = request.app.state.server
    _check(body, server)
    prompts = body.prompts()
    if not prompts:
        raise APIError(400, "prompt must not be empty", param="prompt")
    # Plain text: a control-token string inside a prompt stays ordinary characters.
    encoded = [(p, await asyncio.to_thread(server.tokenizer.encode, p)) if isinstance(p, str) else (None, p)
               for p in prompts]
    job = _start(server, body, encoded, "cmpl", "prompt")
    if body.stream:
        return EventStream(_completion_events(job, body, server), on_close=job.close)
    if not await _collect(job, request):
        return CLIENT_GONE
    choices = [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason,
                "stop_reason": o.stop_reason} for i, o in enumerate(job.outputs())]
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": server.model_name,
            "choices": choices, "usage": job.usage(reasoning=False)}


# ---- shared checks and setup
def _check(body: GenerationRequest, server) -> None:
    if body.model is not None and body.model != server.model_name:
        raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{server.model_name}'",
                       param="model", code="model_not_found")
    refused = body.unsupported()
    if refused:
        raise APIError(400, f"unsupported parameter(s): {', '.join(refused)} (phi4r does not implement them)",
                       param=refused[0], code="unsupported_parameter")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")


def _start(server, body: GenerationRequest, prompts, prefix: str, param: str) -> Job:
    max_tokens = body.max_new_tokens()
    limit = server.engine.max_model_len
    for _, ids in prompts:
        if max_tokens is not None and len(ids) < limit < len(ids) + max_tokens:
            # vLLM's rule: a requested completion that cannot fit is an error, not a silent cut.
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{len(ids) + max_tokens} tokens ({len(ids)} in the {param}, {max_tokens} in the "
                                "completion). Please reduce the length of the input or of max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
    fields = body.sampling_fields()
    fields.setdefault("loop_guard", server.loop_guard)
    try:
        params = SamplingParams(**fields, max_tokens=max_tokens)
    except ValueError as e:  # its messages start with the field's name
        raise APIError(400, str(e), param=str(e).split()[0].split("=")[0], code="invalid_value") from e
    if params.n > server.engine.max_num_seqs:  # could never be scheduled: a 400, not a 429 to retry
        raise APIError(400, f"n={params.n} exceeds the server's --max-num-seqs={server.engine.max_num_seqs}", param="n")
    return Job(server.runner, server.admission, server.metrics, prefix, prompts, params, param)


async def _collect(job: Job, request: Request) -> bool:
    """Wait for a whole (non-streamed) response; False if the client disconnected meanwhile. The job
    is closed either way, which aborts whatever engine requests are still running."""
    try:
        return await _wait_whole(job, request)
    finally:
        job.close()


async def _wait_whole(job: Job, request: Request) -> bool:
    async def drain():
        async for _ in job.deltas():
            pass

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, gone = asyncio.create_task(drain()), asyncio.create_task(disconnected())
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself is cancelled (server shutdown backstop)
        work.cancel()
        raise
    finally:
        gone.cancel()
    if work not in done:
        work.cancel()
        return False
    error = work.exception()
    if isinstance(error, EngineFailure):
        raise APIError(500, str(error), code="engine_error") from error
    if error is not None:
        raise error
    return True


# ---- streaming
class EventStream(StreamingResponse):
    """SSE response that always runs `on_close` (abort + bookkeeping), however the stream ends:
    finished, failed, or cancelled because the client disconnected."""

    def __init__(self, events, on_close):
        super().__init__(_guarded(events), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _guarded(events):
    """`events`, ended by an error event and [DONE] should they raise: once the 200 and its headers
    are sent, an unexpected exception must not just drop the connection."""
    try:
        async for event in events:
            yield event
    except Exception as e:  # a bug: the client still gets OpenAI's error shape
        log.exception("a stream failed")
        yield _sse(APIError(500, f"internal server error: {type(e).__name__}: {e}", code="internal_error").body())
        yield "data: [DONE]\n\n"


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _LiveUsage:
    """Token counts so far, for vLLM's `stream_options.continuous_usage_stats` (the chat page's live
    thinking count), as each choice's latest delta counts them (reasoning: up to its last `</think>`)."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.counts: dict[int, tuple[int, int]] = {}  # choice -> (reasoning, content) tokens

    def add(self, index: int, delta) -> None:
        self.counts[index] = delta.reasoning_tokens, delta.content_tokens

    def usage(self) -> dict:
        reasoning = sum(r for r, _ in self.counts.values())
        completion = reasoning + sum(c for _, c in self.counts.values())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "completion_tokens_details": {"reasoning_tokens": reasoning}}


class _Chunks:
    """Builds the chunks of one stream: OpenAI's envelope, `usage: null` on every chunk when usage
    comes at the end, or the counts so far on every chunk with continuous_usage_stats."""

    def __init__(self, job: Job, body: GenerationRequest, server, kind: str):
        options = body.stream_options
        self.job, self.kind, self.model = job, kind, server.model_name
        self.include_usage = bool(options and options.include_usage)
        self.live = _LiveUsage(job.prompt_tokens) if options and options.continuous_usage_stats else None

    def __call__(self, choices: list[dict]) -> str:
        chunk = {"id": self.job.id, "object": self.kind, "created": self.job.created, "model": self.model,
                 "choices": choices}
        if self.live is not None:
            chunk["usage"] = self.live.usage()
        elif self.include_usage:
            chunk["usage"] = None
        return _sse(chunk)

    def final_usage(self, reasoning: bool) -> str:
        return _sse({"id": self.job.id, "object": self.kind, "created": self.job.created, "model": self.model,
                     "choices": [], "usage": self.job.usage(reasoning)})


async def _chat_events(job: Job, body: ChatCompletionRequest, server):
    chunks = _Chunks(job, body, server, "chat.completion.chunk")
    hold = HoldBack() if (body.reasoning_stream or server.reasoning_stream) == "hold" else None
    for i in range(job.seqs):
        yield chunks([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}])
    try:
        async for d in job.deltas():
            index = job.choice_index(d)
            if chunks.live is not None:
                chunks.live.add(index, d)
            d = hold(d) if hold else d
            if d.reclassified:  # a chunk of its own, so no client can apply it after this delta's text
                fix = {"phi4r_reclassify": {"content_chars": d.reclassified, "joiner": THINK_END}}
                yield chunks([{"index": index, "delta": fix, "logprobs": None, "finish_reason": None}])
            delta = {}
            if d.reasoning:
                delta["reasoning_content"] = delta["reasoning"] = d.reasoning
            if d.content:
                delta["content"] = d.content
            if delta or d.finish_reason:
                yield chunks([_stream_choice(index, d, delta=delta)])
    except EngineFailure as e:
        yield _sse(APIError(500, str(e), code="engine_error").body())
    else:
        if chunks.include_usage:
            yield chunks.final_usage(reasoning=True)
    yield "data: [DONE]\n\n"


async def _completion_events(job: Job, body: CompletionRequest, server):
    chunks = _Chunks(job, body, server, "text_completion")
    try:
        async for d in job.deltas():
            index = job.choice_index(d)
            if chunks.live is not None:
                chunks.live.add(index, d)
            if d.text or d.finish_reason:
                yield chunks([_stream_choice(index, d, text=d.text)])
    except EngineFailure as e:
        yield _sse(APIError(500, str(e), code="engine_error").body())
    else:
        if chunks.include_usage:
            yield chunks.final_usage(reasoning=False)
    yield "data: [DONE]\n\n"


def _stream_choice(index: int, d, **fields) -> dict:
    choice = {"index": index, **fields, "logprobs": None, "finish_reason": d.finish_reason}
    if d.finish_reason:
        choice["stop_reason"] = d.output.stop_reason if d.output is not None else None
    return choice
