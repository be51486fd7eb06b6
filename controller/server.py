"""Running the controller's app under uvicorn, telling open event streams when to end.

uvicorn waits for open responses before it stops, and an event stream never ends by itself;
so when a stop is asked for, the app's state says `closing` and every stream ends within a
poll (controller/api/events.py), and every long-polling pilot is answered at once."""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI


def mark_closing(app: FastAPI) -> None:
    app.state.closing = True


class ControllerServer(uvicorn.Server):
    def __init__(self, app: FastAPI, **config: object) -> None:
        super().__init__(uvicorn.Config(app, **config))  # type: ignore[arg-type]
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        mark_closing(self.app)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.state.notifier.stop()  # long-polls are released at once (uvicorn waits for
        await super().shutdown(sockets)  # every open request before it stops)
