"""Running a worker job from a request handler: as one answer, or streamed as server-sent
events. A full waiting line is a 429; a client that goes away has its job dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmgen.errors import LmgenError

from .errors import APIError, from_lmgen, internal_error
from .responses import sse_event
from .worker import Cancelled, Job, ModelWorker, Overloaded

log = logging.getLogger(__name__)


def submit(worker: ModelWorker, job: Job) -> None:
    try:
        worker.submit(job)
    except Overloaded as e:
        raise APIError(
            429,
            f"the server is busy: {e}; retry shortly",
            type="server_error",
            code="overloaded",
            headers={"Retry-After": "1"},
        ) from None


async def disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run(request: Request, worker: ModelWorker, job: Job) -> Any:
    """Runs `job` and returns its result; drops it if the client goes away first."""
    job.loop = asyncio.get_running_loop()
    submit(worker, job)
    fut = asyncio.wrap_future(job.future)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if fut in done:
        return fut.result()
    job.cancel()
    raise Cancelled("the client went away")


def stream(
    worker: ModelWorker,
    job: Job,
    *,
    on_start: Callable[[], list],
    on_event: Callable[[tuple], list],
    on_whole: Callable[[Any], list],
    on_usage: Callable[[Any], dict] | None,
    incremental: bool,
    prompt_param: str = "prompt",
) -> StreamingResponse:
    """Streams a job as server-sent events ending in `data: [DONE]`. An incremental job sends
    its text as it is decided (`on_event` turns each of the worker's events into chunks);
    otherwise `on_whole` turns the finished result into chunks at the end. `on_usage` makes
    the usage chunk. When the client goes away, the job is dropped at the worker's next turn."""
    job.loop = asyncio.get_running_loop()
    submit(worker, job)  # a full queue is still a proper 429 here
    fut = asyncio.wrap_future(job.future)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def events() -> AsyncIterator[str]:
        try:
            for c in on_start():
                yield sse_event(c)
            if incremental:
                while True:
                    item = await job.events.get()
                    if item[0] == "end":
                        break
                    for c in on_event(item):
                        yield sse_event(c)
            try:
                out = await fut
            except LmgenError as e:  # after the 200: the error travels as an event
                yield sse_event(from_lmgen(e, prompt_param).body())
            except Exception as e:
                log.exception("stream failed")
                yield sse_event(internal_error(e).body())
            else:
                if not incremental:
                    for c in on_whole(out):
                        yield sse_event(c)
                if on_usage is not None:
                    yield sse_event(on_usage(out))
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # a no-op when it finished; stops it when the client left

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
