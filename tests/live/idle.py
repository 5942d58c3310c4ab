"""A node for live-channel tests that drive the channel itself: no document, and a feed that never yields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any


class IdleNode:
    replica_id = "r"

    async def read_state(self, doc_id: str) -> bytes | None:
        return None

    def changes(self, doc_id: str, since: str | None) -> AsyncIterator[dict[str, Any]]:
        async def feed() -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}

        return feed()

    def watch_remote(self, doc_id: str, watcher: Callable[[tuple[str, int | None], bytes], None]) -> Callable[[], None]:
        return lambda: None
