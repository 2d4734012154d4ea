"""What the SDK's stream protocols (`ReadStream`, `WriteStream`) ask of a stream beyond its
`receive` or `send`, for the guard's own streams over pipes (transports/stdio.py on the client's
side, upstream/pipes.py on an upstream's): closing, `async with`, and `async for` until the end of
the stream."""

from __future__ import annotations

from typing import Any, Self

import anyio


class Ends:
    """`aclose` and `async with`, both ending in `close()` (by default, nothing to release)."""

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class Receiving(Ends):
    """`async for` over `receive()`, until it raises anyio.EndOfStream."""

    async def receive(self) -> Any:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
