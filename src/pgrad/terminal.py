"""Where pgrad's human-readable output goes: a rich console that behaves in logs.

On a terminal, rich wraps lines and fits tables to the window. In a CI log, a file or a pipe it would
assume 80 columns: an event line would break in two (``grep run.rollback`` finds half of it) and the
final table would cut the checkpoint path with an ellipsis. So when the stream is not a terminal the
console is as wide as any line pgrad writes and never wraps: one event per line, every path whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# wider than any line pgrad prints (paths included), so a table is laid out at its natural width
LOG_WIDTH = 10_000


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that wraps and cuts nothing when the stream is not a terminal."""
    from rich.console import Console

    terminal = Console(stderr=stderr)
    if terminal.is_terminal:
        return terminal
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True)
