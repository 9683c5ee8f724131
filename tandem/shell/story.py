"""How the demo talks to people: numbered steps as they happen, then one summary table."""

from __future__ import annotations

from dataclasses import dataclass, field

import click


@dataclass
class Story:
    """The steps said so far and the summary lines to print at the end."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    steps: int = 0

    def step(self, title: str) -> None:
        """Announce a step."""
        self.steps += 1
        click.secho(f"{self.steps:>2}. {title}", bold=True)

    def say(self, text: str) -> None:
        """One detail under the current step."""
        click.echo(f"    {text}")

    def add(self, what: str, value: object) -> None:
        """Record one summary line."""
        self.lines.append((what, str(value)))

    def render(self) -> str:
        """The summary table."""
        width = max((len(w) for w, _ in self.lines), default=0)
        return "\n".join(f"  {w:<{width}}  {v}" for w, v in self.lines)


def percentiles(samples: list[float]) -> str:
    """p50, p95 and p99 of millisecond samples, for people."""
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95, 0.99)]
    return "p50 {:.1f} ms, p95 {:.1f} ms, p99 {:.1f} ms".format(*pick)
