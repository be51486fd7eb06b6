"""`python -m pilot --config FILE` (or configured by CLOUDPILOT_* environment variables)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from pilot.agent import Agent
from pilot.config import PilotConfig
from pilot.sandbox import SandboxError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pilot", description="cloudpilot pilot agent")
    ap.add_argument("--config", help="JSON or TOML file (else CLOUDPILOT_* variables)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = PilotConfig.load(args.config)
    except (OSError, ValueError) as e:
        print(f"pilot: {e}", file=sys.stderr)
        return 2
    agent = Agent(cfg)
    done = threading.Event()
    result: list[str] = []

    def work() -> None:
        try:
            result.append(agent.run())
        except SandboxError as e:  # nothing registered, nothing run
            logging.getLogger("pilot").error("cannot sandbox payloads: %s", e)
            result.append(f"error: {e}")
        except Exception as e:  # report and exit non-zero rather than hang
            logging.getLogger("pilot").exception("pilot failed")
            result.append(f"error: {e}")
        finally:
            done.set()

    def on_term(signum: int, frame: object) -> None:
        agent.interrupt()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=work, name="agent", daemon=True).start()
    while not done.wait(0.2) and not agent.stopping.is_set():
        pass
    # every job it holds reports before the pilot says goodbye (whether the agent loop ended
    # first or SIGTERM came first): interrupted ones are rescheduled at once
    agent.wait_jobs(cfg.stop_grace + 10)
    agent.goodbye(result[0] if result else agent.exit_reason or "stopped")
    return 1 if result and result[0].startswith("error") else 0


if __name__ == "__main__":
    sys.exit(main())
