"""Running a worker job from a request handler: as one answer, or streamed as server-sent
events. The job's memory is reserved first (budget.py) and given back when it ends; a full
waiting line is a 429; a client that goes away has its job dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmgen.errors import LmgenError

from .errors import APIError, from_lmgen, internal_error
from .registry import Served
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


async def start(served: Served, job: Job, cost: tuple[int, str]) -> None:
    """Reserves the job's memory (`cost`: bytes, and what they are for), then submits it; the
    reservation ends with the job."""
    nbytes, what = cost
    budget = served.budget
    await budget.reserve(nbytes, what)
    job.loop = asyncio.get_running_loop()
    try:
        submit(served.worker, job)
    except BaseException:
        budget.release(nbytes)
        raise
    budget.release_when_done(job.future, nbytes)


async def disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run(request: Request, served: Served, job: Job, cost: tuple[int, str]) -> Any:
    """Runs `job` and returns its result; drops it if the client goes away first."""
    await start(served, job, cost)
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


async def stream(
    served: Served,
    job: Job,
    cost: tuple[int, str],
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
    await start(served, job, cost)  # a full queue is still a proper 429 here
    fut = asyncio.wrap_future(job.future)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def events() -> AsyncIterator[str]:
        try:
            for c in on_start():
                yield sse_event(c)
            if incremental:
                ended = False
                while not ended:  # a hand-off's events (work.Outbox) go out as one write
                    sent = []
                    for item in await job.events.get():
                        if item[0] == "end":
                            ended = True
                            break
                        sent += [sse_event(c) for c in on_event(item)]
                    if sent:
                        yield "".join(sent)
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
