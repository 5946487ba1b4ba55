"""Every registered known issue's standalone repro proves its bug on the pinned TVM, under one
exit protocol (sdparity.known_issues.repro): 1 is "reproduces" and nothing else, 0 "fixed
upstream?", 4 "cannot run here" (a skip, with the repro's reason), anything else an error of the
repro (an exception, an ImportError, a signal, exit 2): a failure of this test."""

from __future__ import annotations

import re
import os
import signal
from pathlib import Path

import pytest

from sdparity.known_issues import all_issues, repro

REGISTERED = sorted(all_issues())


def _check(path: Path, **kw) -> repro.ReproOutcome:
    """The registry's check of one repro: run it, read its exit under the protocol."""
    return repro.run(path, **kw)


@pytest.mark.parametrize("issue_id", REGISTERED)
def test_registered_entry_is_complete_and_its_repro_exits_1(issue_id):
    """The entry is complete, and its repro runs standalone (torch + TVM only, no sdparity
    import) and exits exactly 1 on the pinned TVM. Exit 4 skips with the repro's reason (e.g.
    the ffi repro's pinned wheel is not in $SDPARITY_CACHE/repro-wheels/ and downloads are off);
    any other exit fails with the repro's output."""
    issue = all_issues()[issue_id]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]+", issue.id) and issue.title and issue.tvm_versions
    assert len(issue.description) > 100, "one paragraph, with the root cause"
    src = issue.repro.read_text()
    assert not re.search(r"^\s*(import|from)\s+sdparity", src, re.M), "a repro must not import sdparity"
    out = _check(issue.repro)
    if out.status == repro.STATUS[repro.CANNOT_RUN]:
        pytest.skip(f"{issue.id} (exit 4): {out.reason}")
    assert out.reproduces, f"{issue.id}: {out.status} (exit {out.returncode}): {out.reason}\n{out.output}"


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return path


#: the wrapper every repro ends with (protocol: an exception is exit 3)
PROTOCOL = '''
import sys


def main() -> int:
{body}


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:
        print(f"repro error: {{type(e).__name__}}: {{e}}", flush=True)
        sys.exit(3)
    sys.exit(code)
'''


CASES = [
    # an exception that escapes: Python itself exits 1, with a traceback: NOT "reproduces"
    ("uncaught", "raise RuntimeError('the TVM API changed')\n", "error", "uncaught exception"),
    ("import_error", "import tvm_no_such_module\n", "error", "ModuleNotFoundError"),
    # the protocol's wrapper: an exception in main is exit 3
    ("wrapped", PROTOCOL.format(body="    raise AttributeError('no attribute value')"), "error",
     "repro error: AttributeError"),
    ("exit_2", "import sys\nprint('pip could not install it')\nsys.exit(2)\n", "error", "not part of the repro protocol"),
    ("segfault", f"import os\nos.kill(os.getpid(), {int(signal.SIGSEGV)})\n", "error", "died of SIGSEGV"),
    ("fixed", PROTOCOL.format(body="    print('fixed: the same calls work')\n    return 0"), "fixed upstream?",
     "fixed: the same calls work"),
    ("cannot_run", PROTOCOL.format(body="    print('cannot run here: no wheel')\n    return 4"), "cannot run here",
     "cannot run here: no wheel"),
    ("reproduces", PROTOCOL.format(body="    print('reproduces: 64 floats written')\n    return 1"), "reproduces",
     "reproduces: 64 floats written"),
]


@pytest.mark.parametrize("name,body,status,reason", CASES, ids=[c[0] for c in CASES])
def test_only_exit_1_reads_as_reproduces(tmp_path, name, body, status, reason):
    """A repro that raises an exception FAILS the check (the helper reports an error, not
    "reproduces"), whether the exception escapes (exit 1 with a traceback) or goes through the
    protocol's wrapper (exit 3); so do exit 2 and a crash of the repro itself. Exit 0 is
    "fixed upstream?", exit 4 "cannot run here"; only a clean exit 1 reproduces."""
    out = _check(_write(tmp_path, name, body), timeout=60)
    assert out.status == status and reason in out.reason, out
    assert out.reproduces == (status == "reproduces")


def test_the_registry_check_fails_for_a_repro_that_raises(tmp_path, monkeypatch):
    """The registry's test itself (above), run on an entry whose repro raises: it fails, with the
    repro's message, where the old check (any non-zero exit) passed it."""
    from sdparity import known_issues
    from sdparity.known_issues import KnownIssue, register, unregister

    monkeypatch.setattr(known_issues, "REPROS", tmp_path)
    issue = register(KnownIssue(
        id="test-local-raising-repro", title="a repro that raises (test-local entry)",
        description="Stands in for a repro whose TVM API changed: it raises before it reaches the "
        "calls that would show the bug, so its exit status says nothing about the bug at all.",
        covers=known_issues.no_check, tvm_versions=("0.27.0.post1",)))
    try:
        _write(tmp_path, issue.id, "import sys\nraise ImportError('cannot import name relax from tvm')\n")
        with pytest.raises(AssertionError, match=r"error \(exit 1\): exit 1 from an uncaught exception"):
            test_registered_entry_is_complete_and_its_repro_exits_1(issue.id)
        _write(tmp_path, issue.id, PROTOCOL.format(body="    return 0"))
        with pytest.raises(AssertionError, match=r"fixed upstream\? \(exit 0\)"):
            test_registered_entry_is_complete_and_its_repro_exits_1(issue.id)
    finally:
        unregister(issue.id)


@pytest.mark.parametrize("issue_id", REGISTERED)
def test_a_repro_without_tvm_is_an_error_not_a_reproduction(issue_id, tmp_path):
    """Each registered repro run where ``import tvm`` fails (a stand-in package first on the
    path): the repro itself reports an error (exit 3), never exit 1."""
    fake = tmp_path / "site" / "tvm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('tvm made unimportable by test_repros')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    out = _check(all_issues()[issue_id].repro, env=env, timeout=300)
    assert out.returncode == repro.ERROR and out.status == "error", out
    assert "ImportError" in out.reason and "tvm made unimportable" in out.reason, out


def test_statuses_are_what_the_protocol_names():
    assert repro.interpret(1, "reproduces\n") == ("reproduces", "reproduces")
    assert repro.interpret(1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n")[0] == "error"
    assert repro.interpret(0)[0] == "fixed upstream?" and repro.interpret(4, "cannot run here: x")[0] == "cannot run here"
    assert repro.interpret(-int(signal.SIGABRT))[1].startswith("the repro itself died of SIGABRT")
    assert repro.interpret(None)[0] == repro.interpret(2)[0] == repro.interpret(139)[0] == "error"
