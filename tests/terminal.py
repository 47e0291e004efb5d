"""A command under a pseudo-terminal, and what a person would read on the screen.

`render` replays the control characters progress bars and log lines use (carriage
return, newline, erase to the end of the line, cursor up) on a grid of lines, as a
terminal does; anything a bar leaves behind, or a log line split by one, shows there.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

_CSI = re.compile(r"\x1b\[(\d*)([A-Za-z])")


def render(text: str) -> list[str]:
    """The screen's lines (scrolled back included) after `text` is written to it."""
    lines, row, col, i = [""], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\x1b" and (match := _CSI.match(text, i)):
            count, op = int(match.group(1) or 1), match.group(2)
            if op == "K":
                lines[row] = lines[row][:col]
            elif op == "A":
                row = max(row - count, 0)
            i = match.end()  # other sequences (colours) draw nothing
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1 :]
            col += 1
        i += 1
    return [line.rstrip() for line in lines]


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float, columns: int = 160) -> tuple[int, str]:
    """(exit status, everything written) of `args` with stdin, stdout and stderr on a
    pseudo-terminal `columns` wide, as from a person's shell."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(args, stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    output, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        else:
            process.kill()
            raise TimeoutError(f"{args} ran past {timeout} s; its output so far:\n{output.decode(errors='replace')[-4000:]}")
    finally:
        os.close(primary)
    return process.wait(timeout=60), output.decode("utf-8", errors="replace")
