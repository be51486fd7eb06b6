"""A kind of endpoint that starts no machine and says why: the smallest `EndpointKind`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.domain.fleet import Decision
from controller.reconcile.endpoint import EndpointKind, LoopEnv, Outcome, Step, Tick
from controller.reconcile.worker import Worker


class TinyEndpoint:
    def __init__(self, config: Any, env: LoopEnv) -> None:
        self.name = config.name
        self.config = config
        self.env = env
        self.worker = Worker(config.name, config.apply_timeout, env.clock)

    def observe(self, now: float) -> None:
        pass

    def decide(self, tick: Tick) -> Step:
        waiting = sum(q.waiting for q in tick.queues)
        why = f"{self.config.options['greeting']}: {waiting} jobs wait, the tiny kind starts none"
        return Step(Decision(self.name, (), (), (), 0.0, (why,)),
                    outcome=Outcome(message=why))

    def timed_out(self, now: float) -> str:
        return "nothing to time out"

    def lead(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class TinyKind:
    """The entry point's object: its options and how to build one."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        greeting: str = Field("hello", description="the first word of each reason")

    @staticmethod
    def build(config: Any, env: LoopEnv) -> EndpointKind:
        return TinyEndpoint(config, env)
