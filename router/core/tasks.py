"""Small helpers for the core's background tasks."""
from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped; None (never started) is fine.

    The cancellation is repeated until the task is done: on Python 3.11, ``asyncio.wait_for`` can swallow a
    cancellation that arrives just as what it waits for completes (gh-86296), and a loop around it would then
    go on for ever, holding up the shutdown.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task
