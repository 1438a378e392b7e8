"""What an ``atlas`` command shows on the terminal, and the full log it keeps in a file.

Dagster's console logger prints every event of an in-process run at DEBUG (175 lines for the
demo) and a step failure as one record holding the whole traceback (70-230 lines) before the
CLI's own one-line reason. A command keeps all of that in its log file and shows on the terminal
only what a user reads: its own lines, and Dagster's INFO/WARNING records cut to their first
line. ``--verbose`` shows everything, tracebacks included.

Why a stream filter rather than logger levels: Dagster creates a fresh console logger per run
(``create_console_logger``, not registered with ``logging``), writing to ``sys.stderr`` as it is
at each record; each record arrives as one ``write`` call, so records are recognised whole.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import TextIO

LOGS_KEPT = 50
"""Log files kept in the logs folder; older ones are deleted when a command starts."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_DAGSTER_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - dagster - ([A-Z]+) - ")


def logs_dir() -> Path:
    """``$ATLAS_HOME/logs`` for a local data root, else a folder in the system's temp directory."""
    root = os.environ.get("ATLAS_HOME") or "~/.atlas"
    if "://" in root:
        return Path(tempfile.gettempdir()) / "atlas-logs"
    return Path(root).expanduser() / "logs"


def terminal_text(text: str, verbose: bool) -> str:
    """The part of one ``write`` to stderr that the terminal shows ('' for none)."""
    if verbose:
        return text
    match = _DAGSTER_RECORD.match(_ANSI.sub("", text))
    if match is None:
        return text
    level = match.group(1)
    if level in ("INFO", "WARNING"):
        first = text.split("\n", 1)[0]
        return first + "\n"
    return ""  # DEBUG events; ERROR records (failure tracebacks): the command prints the reason


class _Tee(io.TextIOBase):
    """stderr that writes everything to the log file and the filtered text to the terminal."""

    def __init__(self, terminal: TextIO, log: TextIO, verbose: bool) -> None:
        self.terminal, self.log, self.verbose = terminal, log, verbose

    def write(self, text: str) -> int:
        if not self.log.closed:
            self.log.write(_ANSI.sub("", text))
        shown = terminal_text(text, self.verbose)
        if shown:
            self.terminal.write(shown)
        return len(text)

    def flush(self) -> None:
        if not self.log.closed:
            self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:  # progress bars and colours follow the real terminal
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


class CommandConsole:
    """One command's console: ``with CommandConsole("fetch", verbose) as console: ...``."""

    def __init__(self, command: str, verbose: bool) -> None:
        self.command, self.verbose = command, verbose
        self.log_path: Path | None = None
        self._log: TextIO | None = None
        self._stderr: TextIO | None = None
        self._showwarning = None

    def __enter__(self) -> CommandConsole:
        try:
            folder = logs_dir()
            folder.mkdir(parents=True, exist_ok=True)
            _prune(folder)
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.log_path = folder / f"atlas-{self.command}-{stamp}-{os.getpid()}.log"
            self._log = self.log_path.open("w", encoding="utf-8")
        except OSError:  # an unwritable home must not stop the command; the terminal still works
            self.log_path, self._log = None, io.StringIO()
        self._log.write(f"atlas {' '.join(sys.argv[1:])}  (pid {os.getpid()}, {dt.datetime.now().isoformat()})\n")
        self._stderr = sys.stderr
        sys.stderr = _Tee(self._stderr, self._log, self.verbose)  # type: ignore[assignment]
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._warning
        return self

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        """Python warnings (Dagster's preview notices, library deprecations) go to the log file;
        the terminal shows them only with --verbose."""
        text = warnings.formatwarning(message, category, filename, lineno, line)
        assert self._log is not None and self._stderr is not None
        self._log.write(text)
        if self.verbose:
            self._stderr.write(text)

    def __exit__(self, *exc: object) -> None:
        if self._stderr is not None:
            sys.stderr.flush()
            sys.stderr = self._stderr
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
        if self._log is not None:
            self._log.close()

    def fail(self, line: str, error: BaseException | None = None) -> None:
        """The command's last words: the one-line reason, and where the full log is.

        ``error``'s traceback goes to the log file (and, with --verbose, the terminal)."""
        if error is not None and self._log is not None and not self._log.closed:
            text = "".join(traceback.format_exception(error))
            self._log.write(text)
            if self.verbose and self._stderr is not None:
                self._stderr.write(text)
        print(" ".join(line.split()), file=sys.stderr)
        if self.log_path is not None:
            hint = "" if self.verbose else "; --verbose shows it here"
            print(f"atlas: full log: {self.log_path}{hint}", file=sys.stderr)


def _prune(folder: Path) -> None:
    logs = sorted(folder.glob("atlas-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(len(logs) - LOGS_KEPT + 1, 0)]:
        old.unlink(missing_ok=True)
