"""Progress bars show on a terminal and stay out of logs."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

SCRIPT = "from sekd.progress import progress\nfor _ in progress(range(3), 3, 'synth'): pass\n"


def _stderr_of(on_terminal: bool) -> str:
    if not on_terminal:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
        return proc.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a real size
    subprocess.run([sys.executable, "-c", SCRIPT], stderr=follower, check=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other end is closed: all read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_bar_on_a_terminal_and_silence_in_a_log():
    shown = _stderr_of(on_terminal=True)
    assert "synth:" in shown and "0/3" in shown  # the bar drew (and cleared itself: leave=False)
    assert _stderr_of(on_terminal=False) == ""
