"""`cloudpilot explain` and `cloudpilot replay`: an endpoint's last decision in words, and a
recorded tick re-run through decide() with the same or another config (the what-if)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controller.config.settings import BatchEndpointConfig, Settings
from controller.domain import ticks
from controller.domain.refusals import Refusal, describe
from controller.errors import ConfigError


def _price(p: float | None) -> str:
    return "-" if p is None else f"${p:.4f}"


def format_explain(doc: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["at"]))
    lines = [f"endpoint {doc['endpoint']}: tick {doc['tick']} at {when}"]
    q = doc["queues"]
    lines.append(f"inputs: {len(q)} task queues, {sum(x['waiting'] for x in q)} waiting jobs; "
                 f"{len(doc['machines'])} live machines; {len(doc['prices'])} spot prices")
    for x in sorted(q, key=lambda x: -x["waiting"])[:10]:
        r = x["requirements"]
        predicted = x.get("predicted_runtime")
        lines.append(f"  task queue {x['id']} ({x['owner']}): {x['waiting']} waiting, "
                     f"{r['cores']} cores / {r['memory_mb']} MB"
                     + ("" if r.get("spot", True) else ", on-demand only")
                     + ("" if predicted is None else f", run time {predicted:.0f}s predicted "
                        f"(max_runtime {r['max_runtime']}s)"))
    for m in doc["machines"]:
        until = m.get("busy_until") or 0.0
        lines.append(f"  machine {m['name']} {m['state']} {m.get('pool') or ''} "
                     f"busy {m['busy_slots']}/{m['slots']}"
                     + (f", its jobs should end in {max(until - doc['at'], 0):.0f}s (predicted)"
                        if until else ""))
    b = doc["budget"]
    if b.get("machines") is not None or b.get("spend_per_hour") is not None:
        lines.append(f"  budget left: machines {b.get('machines')}, "
                     f"spend {b.get('spend_per_hour')} USD/h")
    blocked = [r for r in doc.get("refusals", []) if r["until"] > doc["at"]]
    if blocked:
        lines.append("offers the cloud refused lately (not tried until their block ends):")
        for r in blocked:
            lines.append(f"  {r['pool']}: {describe(Refusal.from_dict(r), doc['at'])}")
    if doc["candidates"]:
        lines.append("candidates (cheapest per core first):")
        lines.append(f"  {'pool':34} {'price/h':>9} {'max/h':>9} {'per core':>9}  status")
        for c in doc["candidates"]:
            lines.append(f"  {c['pool']:34} {_price(c['price']):>9} {_price(c['max_price']):>9}"
                         f" {_price(c['per_core_hour']):>9}  {c['status']}")
    lines.append(f"decision: demand {doc['demand']}, {len(doc['started'])} started, "
                 f"{len(doc['removed'])} removed")
    for s in doc["started"]:
        lines.append(f"  + {s['name']}: {s['reason']}")
    for r in doc["removed"]:
        lines.append(f"  - {r['name']} -> {r['to']}: {r['reason']}")
    for r in doc["reasons"]:
        lines.append(f"  ({r})")
    return "\n".join(lines)


def replay(tick: dict[str, Any], config: str | Path | None = None) -> str:
    """Re-run a recorded tick; with `config`, with that file's spec for the same endpoint.
    Says what would have been decided differently."""
    inputs = ticks.decode(tick["inputs"])
    source = "the recorded config"
    if config is not None:
        ep = Settings.load(config).endpoint(tick["endpoint"])
        if ep is None:
            raise ConfigError(f"{config} has no endpoint {tick['endpoint']}")
        source = str(config)
        if isinstance(inputs, ticks.BatchTickInputs):
            if not isinstance(ep, BatchEndpointConfig):
                raise ConfigError(f"{config}: endpoint {ep.name} is not a batch endpoint")
            again = ticks.decision_to_dict(inputs.decide(ep.batch_spec()))
        else:
            again = ticks.decision_to_dict(inputs.decide(ep.spec()))
    else:
        again = ticks.decision_to_dict(inputs.decide())
    lines = [f"tick {tick['id']} of endpoint {tick['endpoint']}, replayed with {source}:"]
    diff = ticks.differences(tick["decision"], again)
    if not diff:
        lines.append("  the same decision: " + _summary(again))
    else:
        lines.append("  recorded: " + _summary(tick["decision"]))
        lines.append("  now:      " + _summary(again))
        lines += [f"  {d}" for d in diff]
    return "\n".join(lines)


def _summary(d: dict[str, Any]) -> str:
    starts: dict[str, int] = {}
    pools = {x["name"]: x["pool"] for x in d.get("launches", [])}
    for n in d["start"]:
        starts[pools.get(n, "machine")] = starts.get(pools.get(n, "machine"), 0) + 1
    s = ", ".join(f"{k} x{v}" for k, v in sorted(starts.items())) or "nothing"
    return f"start {s}; remove {len(d['remove'])}"
