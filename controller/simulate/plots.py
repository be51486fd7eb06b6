"""PNG plots of a replay: queue length, machines by type, spend over time (matplotlib,
optional: `pip install 'cloudpilot[spot]'`)."""

from __future__ import annotations

from pathlib import Path

from controller.errors import ConfigError
from controller.simulate.engine import Outcome


def plot(outcomes: list[Outcome], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'cloudpilot[spot]' "
                          "(or run with --no-plots)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for o in outcomes:
        hours = [s.t / 3600 for s in o.samples]
        axes[0].plot(hours, [s.waiting for s in o.samples], label=o.policy, lw=0.8)
        axes[1].plot(hours, [s.spend for s in o.samples], label=o.policy, lw=0.8)
    axes[0].set_ylabel("waiting jobs")
    axes[0].set_yscale("symlog")
    axes[1].set_ylabel("spend (USD per hour)")
    axes[1].set_xlabel("hours since the trace's start")
    axes[0].legend()
    axes[0].set_title("Queue length and spend over time")
    fig.tight_layout()
    path = out_dir / "queue-and-spend.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    for o in outcomes:
        types = sorted({t for s in o.samples for t in s.machines},
                       key=lambda t: (len(t), t))
        if not types:
            continue
        fig, ax = plt.subplots(figsize=(11, 4))
        hours = [s.t / 3600 for s in o.samples]
        ax.stackplot(hours, [[s.machines.get(t, 0) for s in o.samples] for t in types],
                     labels=types)
        ax.set_ylabel("machines")
        ax.set_xlabel("hours since the trace's start")
        ax.set_title(f"Machines by type: {o.policy}")
        ax.legend(loc="upper left", fontsize=7, ncol=3)
        fig.tight_layout()
        path = out_dir / f"machines-{o.policy}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
