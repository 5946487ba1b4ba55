"""Running a known issue's standalone repro and reading its exit status: one protocol.

A repro (``sdparity/known_issues/repros/<id>.py``, torch and TVM only) ends with one of

* **1** — the bug reproduces, and nothing else: the script saw the evidence it was written for;
* **0** — fixed: the same calls now behave correctly ("fixed upstream?");
* **4** — cannot run here: something it needs is absent on this machine and may not be fetched
  (e.g. a wheel that is not in ``$SDPARITY_CACHE/repro-wheels/`` while downloads are off); its
  last output line says what;
* anything else — an error of the repro, never evidence: an exception (each repro maps one to
  exit **3** with a one-line message), an ImportError, a changed TVM API, a crash or a signal,
  exit 2, a time-out. An exit 1 that comes with a Python traceback on stderr (an uncaught
  exception, which Python also ends with status 1) is an error too.

``run(path)`` runs one and ``interpret(...)`` reads an exit status; the registry's test
(tests/unit/test_repros.py), and any command that reports on repros, use these two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FIXED, REPRODUCES, ERROR, CANNOT_RUN = 0, 1, 3, 4
#: the status of each outcome, as reports and test messages print it
STATUS = {REPRODUCES: "reproduces", FIXED: "fixed upstream?", CANNOT_RUN: "cannot run here"}
ERROR_STATUS = "error"
#: set to 1 to let repros download what they need (e.g. a pinned wheel) into $SDPARITY_CACHE
DOWNLOAD_ENV = "SDPARITY_REPRO_DOWNLOAD"

_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class ReproOutcome:
    status: str  # "reproduces" | "fixed upstream?" | "cannot run here" | "error"
    returncode: int | None  # None: it did not finish (time-out, could not start)
    reason: str  # one line
    output: str = ""  # the end of its stdout and stderr
    seconds: float = 0.0

    @property
    def reproduces(self) -> bool:
        return self.status == STATUS[REPRODUCES]

    def to_json(self) -> dict:
        return {"status": self.status, "returncode": self.returncode, "reason": self.reason,
                "seconds": round(self.seconds, 2)}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def interpret(returncode: int | None, stdout: str = "", stderr: str = "") -> tuple[str, str]:
    """(status, one-line reason) of a repro that ended with ``returncode`` (negative: killed by
    that signal, as subprocess reports it; None: it did not finish)."""
    said = _last_line(stdout)
    if returncode is None:
        return ERROR_STATUS, "the repro did not finish"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ERROR_STATUS, f"the repro itself died of {name} (a crash that is evidence is shown by a child process)"
    if returncode == REPRODUCES:
        if _TRACEBACK in (stderr or ""):
            return ERROR_STATUS, f"exit 1 from an uncaught exception, not from the evidence: {_last_line(stderr)}"
        return STATUS[REPRODUCES], said or "exit 1"
    if returncode == FIXED:
        return STATUS[FIXED], said or "exit 0"
    if returncode == CANNOT_RUN:
        return STATUS[CANNOT_RUN], said or "exit 4 (no reason printed)"
    if returncode == ERROR:
        return ERROR_STATUS, said or _last_line(stderr) or "exit 3 (no message)"
    return ERROR_STATUS, (f"exit status {returncode} is not part of the repro protocol: "
                          f"{_last_line(stderr) or said or 'no output'}")


def run(path: str | os.PathLike, timeout: float = 600, env: dict | None = None,
        python: str = sys.executable) -> ReproOutcome:
    """Run the repro ``path`` with ``python`` in its own folder and interpret its exit."""
    path = Path(path)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, str(path)], capture_output=True, text=True, timeout=timeout,
                              cwd=path.parent, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return ReproOutcome(ERROR_STATUS, None, f"timed out after {timeout:g} s", out[-4000:],
                            time.perf_counter() - t0)
    except OSError as e:
        return ReproOutcome(ERROR_STATUS, None, f"could not start: {e}", "", time.perf_counter() - t0)
    status, reason = interpret(proc.returncode, proc.stdout, proc.stderr)
    output = (proc.stdout[-4000:] + ("\n--- stderr ---\n" + proc.stderr[-4000:] if proc.stderr.strip() else ""))
    return ReproOutcome(status, proc.returncode, reason, output, time.perf_counter() - t0)
