"""Issue 23: safe with the user's files and a shared cache (docs/reliability.md has the table of
trials, what each did before and the test here that keeps it).

Destructive paths are built under pytest's tmp_path only: a device node made with mknod, a
tmpfs mounted read-only or of 64 KiB (a full disk), never a real system path. Mounting and
mknod need root (CAP_SYS_ADMIN, CAP_MKNOD): those tests are skipped where they are missing.
Builds use the two weight-free stages (concat_embeddings, image_to_rgba: < 1 s each) on llvm.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdparity.cache import BuildCache, _verify
from sdparity.errors import SdparityError
from sdparity.files import cache_root, write_atomic, write_atomic_bytes

ROOT = Path(__file__).resolve().parents[2]
CHEAP = "concat_embeddings,image_to_rgba"


# ---- helpers ---------------------------------------------------------------------------------

def sdparity(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "sdparity", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def one_error_line(r) -> str:
    """Exit 2 and exactly one line on stderr, ``sdparity: error: ...``."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdparity: error:"), r.stderr[-3000:]
    return lines[0]


def timed(*args, **kw):
    """(result, CPU seconds of the child): bad input must be refused before any import/build."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = sdparity(*args, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str):
    """A tmpfs on ``folder`` (under tmp_path), unmounted afterwards; skip without mount rights."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k",) + options), "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def remount_ro(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


@contextlib.contextmanager
def full_disk(folder: Path):
    """A 64 KiB tmpfs filled to the last byte."""
    with tmpfs(folder) as d:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
        os.close(fd)
        yield d


def device_node(path: Path) -> Path:
    """A character device (1,3: the null device's numbers) of our own, under tmp_path."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError as e:
        pytest.skip(f"cannot mknod here: {e}")
    return path


def node_intact(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


@pytest.fixture(scope="module")
def small_report(tmp_path_factory) -> Path:
    """A valid sdparity.report/1 with no results (what html and gate read)."""
    from sdparity.reports.report import Report

    path = tmp_path_factory.mktemp("report") / "r.json"
    path.write_text(Report(None).to_json())
    return path


def fresh_cache(tmp_path: Path) -> Path:
    """An empty cache folder that shares the tiny model (a symlink) and the TVM hash memo (a
    copy), so a run only builds."""
    from reference.models import builtin_model_path, ensure_builtin

    ensure_builtin("tiny", log=lambda *a: None)
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "models" / builtin_model_path("tiny").name).symlink_to(builtin_model_path("tiny"))
    memo = cache_root() / "identity"
    if memo.is_dir():
        shutil.copytree(memo, root / "identity")
    return root


def entries(builds: Path) -> list[Path]:
    """The cache's entries (none yet when a kill landed before the first build made the folder)."""
    return sorted(p for p in builds.iterdir() if not p.name.startswith(".")) if builds.is_dir() else []


def assert_cache_valid(builds: Path) -> None:
    """Every entry verifies (sizes and sha256 of every file), no temp folder is left."""
    for e in entries(builds):
        _verify(e, deep=True)
    left = [p.name for p in builds.iterdir() if p.name.startswith(".build-")]
    assert not left, left


# ---- 1. output paths: only a regular file (or nothing) is ever replaced ---------------------------

def test_atomic_writer_replaces_only_a_regular_file(tmp_path):
    node = device_node(tmp_path / "node")
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to_node").symlink_to(node)
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    for target in (node, folder, fifo, tmp_path / "to_node", tmp_path / "dangling"):
        with pytest.raises(SdparityError, match="cannot write") as e:
            write_atomic(target, "x")
        assert "\n" not in str(e.value)
    assert node_intact(node) and folder.is_dir() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.path.islink(tmp_path / "to_node") and not (tmp_path / "nothing").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    # a regular file, nothing, and a link to a regular file (the link is replaced, the file kept)
    (tmp_path / "old.txt").write_text("old")
    write_atomic(tmp_path / "old.txt", "new")
    write_atomic(tmp_path / "sub" / "new.txt", "new")
    (tmp_path / "link").symlink_to(tmp_path / "old.txt")
    write_atomic_bytes(tmp_path / "link", b"via link")
    assert (tmp_path / "old.txt").read_text() == "new" and (tmp_path / "sub" / "new.txt").read_text() == "new"
    assert (tmp_path / "link").read_bytes() == b"via link"


def test_atomic_writer_on_a_read_only_or_full_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro") as ro:
        with pytest.raises(SdparityError, match="Read-only file system"):
            write_atomic(ro / "r.json", "x")
    with full_disk(tmp_path / "full") as full:
        with pytest.raises(SdparityError, match="No space left on device"):
            write_atomic(full / "r.json", "x" * 100_000)
        assert [p.name for p in full.iterdir()] == ["filler"]  # the temp file is gone


def test_new_files_and_cache_entries_respect_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        write_atomic(tmp_path / "r.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o664  # mkstemp alone: 0600
        os.chmod(tmp_path / "r.json", 0o640)
        write_atomic(tmp_path / "r.json", "{}")  # a replaced file keeps its mode
        assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o640
        path, _, _ = BuildCache(tmp_path / "builds").get_or_build(
            {"a": 1}, lambda tmp: (tmp / "lib.so").write_bytes(b"x") and None, log=lambda *a: None)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o775  # mkdtemp alone: 0700
        from sdparity.reports.images import write_images

        write_images({"a.diff.png": b"png"}, tmp_path / "r.json")
        assert stat.S_IMODE(os.stat(tmp_path / "r_images").st_mode) == 0o775
        assert stat.S_IMODE(os.stat(tmp_path / "r_images" / "a.diff.png").st_mode) == 0o664
    finally:
        os.umask(old)


def _outputs(small_report, target):
    """The three output options, each pointed at ``target``."""
    return {
        "check --report": ("check", "--stages", CHEAP, "--report", target),
        "html -o": ("html", small_report, "-o", target),
        "gate --json": ("gate", small_report, small_report, "--json", target),
    }


@pytest.mark.parametrize("option", ["check --report", "html -o", "gate --json"])
def test_output_option_refuses_a_device_node(option, tmp_path, small_report):
    node = device_node(tmp_path / "node")
    r, cpu = timed(*_outputs(small_report, node)[option])
    assert "not a regular file" in one_error_line(r)
    assert node_intact(node)
    if option == "check --report":
        assert cpu < 1.5, f"{cpu:.2f} s of CPU: refused after work began"


@pytest.mark.parametrize("option", ["check --report", "html -o", "gate --json"])
def test_output_option_refuses_a_folder(option, tmp_path, small_report):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    line = one_error_line(sdparity(*_outputs(small_report, folder)[option]))
    assert "folder" in line and (folder / "keep").read_text() == "mine"


@pytest.mark.parametrize("option", ["check --report", "html -o", "gate --json"])
def test_output_option_refuses_a_read_only_mount(option, tmp_path, small_report):
    with tmpfs(tmp_path / "ro", "ro") as ro:
        line = one_error_line(sdparity(*_outputs(small_report, ro / "out.json")[option]))
        assert "Read-only file system" in line


def test_report_into_a_full_folder_is_refused_up_front(tmp_path):
    with full_disk(tmp_path / "full") as full:
        r, cpu = timed("check", "--stages", CHEAP, "--report", full / "r.json")
        assert "full" in one_error_line(r) and cpu < 1.5


def test_report_whose_html_page_is_a_folder_is_refused_up_front(tmp_path):
    (tmp_path / "r.html").mkdir()
    r, cpu = timed("check", "--stages", CHEAP, "--report", tmp_path / "r.json")
    line = one_error_line(r)
    assert "HTML page" in line and "r.html" in line and cpu < 1.5
    assert not (tmp_path / "r.json").exists()
    # a report named .html would be overwritten by its own page
    assert "overwrite the report" in one_error_line(sdparity("check", "--report", tmp_path / "x.html"))


# ---- 2. the images folder: only sdparity's own is replaced ------------------------------------

def test_foreign_images_folder_survives(tmp_path):
    photos = tmp_path / "photos_images"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(b"holiday")
    r, cpu = timed("check", "--stages", CHEAP, "--report", tmp_path / "photos.json")
    assert "not made by sdparity" in one_error_line(r) and cpu < 1.5
    # the writer itself refuses too (a caller that skipped the CLI's check)
    from sdparity.reports.report import Report

    rep = Report(None)
    rep.images["x.diff.png"] = b"png"
    with pytest.raises(SdparityError, match="not made by sdparity"):
        rep.write(tmp_path / "photos.json")
    assert (photos / "IMG_0001.jpg").read_bytes() == b"holiday" and sorted(os.listdir(photos)) == ["IMG_0001.jpg"]
    assert not (tmp_path / "photos.json").exists()
    # a file of that name survives as well
    (tmp_path / "notes_images").write_text("my notes")
    assert "not a folder" in one_error_line(sdparity("check", "--report", tmp_path / "notes.json"))
    with pytest.raises(SdparityError, match="not a folder"):
        rep.write(tmp_path / "notes.json")
    assert (tmp_path / "notes_images").read_text() == "my notes"


def test_own_images_folder_is_marked_and_replaced(tmp_path):
    from sdparity.reports.images import MARKER, images_dir_problem
    from sdparity.reports.report import Report

    rep = Report(None)
    rep.images["a.rgba.diff.png"] = b"one"
    rep.write(tmp_path / "r.json")
    folder = tmp_path / "r_images"
    assert (folder / MARKER).is_file() and images_dir_problem(tmp_path / "r.json") is None
    rep.images = {"b.rgba.diff.png": b"two"}
    rep.write(tmp_path / "r.json")  # its own folder: replaced as a whole
    assert sorted(os.listdir(folder)) == [MARKER, "b.rgba.diff.png"]
    assert json.loads((tmp_path / "r.json").read_text())["images_dir"] == "r_images"
    # a folder written before the marker existed (only sdparity's PNG names) is still its own
    old = tmp_path / "old_images"
    old.mkdir()
    (old / "vae.llvm.latents0.image.diff.png").write_bytes(b"png")
    assert images_dir_problem(tmp_path / "old.json") is None


# ---- 3. the cache root, decided in one place -------------------------------------------------

def test_empty_sdparity_cache_is_unset_never_the_current_folder(tmp_path, monkeypatch):
    work, home = tmp_path / "work", tmp_path / "home"
    (work / "builds" / "precious").mkdir(parents=True)
    (work / "builds" / "precious" / "thesis.tex").write_text("mine")
    (home / ".cache" / "sdparity" / "builds" / "0123456789abcdef0123").mkdir(parents=True)
    env = {**os.environ, "SDPARITY_CACHE": "", "HOME": str(home)}
    r = sdparity("cache", "path", env=env, cwd=work)
    assert r.returncode == 0 and r.stdout.strip() == str(home / ".cache" / "sdparity" / "builds")
    r = sdparity("cache", "clear", env=env, cwd=work)
    assert r.returncode == 0 and "removed 1 entries" in r.stdout, r.stdout + r.stderr
    assert (work / "builds" / "precious" / "thesis.tex").read_text() == "mine"
    # every user of the cache folder asks sdparity.files.cache_root
    from reference import models
    from sdparity import cache, identity

    for value in ("", "  "):
        monkeypatch.setenv("SDPARITY_CACHE", value)
        monkeypatch.setenv("HOME", str(home))
        want = home / ".cache" / "sdparity"
        assert cache_root() == want and cache.default_root() == want / "builds"
        assert models.cache_root() == want and identity._memo_dir() == want / "identity"


def test_the_cache_root_is_read_in_one_place():
    """No module of the package but sdparity/files.py reads $SDPARITY_CACHE (there were four
    that disagreed on an empty value). The known-issue repros are standalone scripts (run by
    path, TVM only, no sdparity import): they may read it, but must agree (empty = unset)."""
    import re

    readers, repros = [], []
    pattern = re.compile(r"""(environ\.get|getenv)\(\s*["']SDPARITY_CACHE["']|environ\[\s*["']SDPARITY_CACHE""")
    for folder in ("sdparity", "reference"):
        for f in (ROOT / folder).rglob("*.py"):
            text = f.read_text()
            for m in pattern.finditer(text):
                rel = str(f.relative_to(ROOT))
                if rel.startswith("sdparity/known_issues/repros/"):
                    repros.append(text[m.start():text.index("\n", m.start())])
                else:
                    readers.append(rel)
    assert readers == ["sdparity/files.py"]
    for line in repros:
        assert re.match(r"""environ\.get\(["']SDPARITY_CACHE["']\) or """, line), line


def test_cache_clear_on_a_read_only_cache_says_it_failed(tmp_path):
    with tmpfs(tmp_path / "cache", "size=1m") as root:
        cache = BuildCache(root / "builds")
        cache.get_or_build({"a": 1}, lambda tmp: (tmp / "lib.so").write_bytes(b"x") and None, log=lambda *a: None)
        remount_ro(root)
        r = sdparity("cache", "clear", env={**os.environ, "SDPARITY_CACHE": str(root)})
        line = one_error_line(r)
        assert "could not remove 1 of 1" in line and "removed 0" in line and "Read-only" in line
        assert "removed 1" not in r.stdout + r.stderr and len(entries(root / "builds")) == 1


# ---- 4. concurrency on one cache, killed builds, Ctrl-C ----------------------------------------

def _slow_builder(calls):
    def build(tmp):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        (tmp / "lib.so").write_bytes(b"x" * 1000)
        return None
    return build


@pytest.mark.parametrize("rebuild", [False, True])
def test_concurrent_gets_build_each_entry_once(tmp_path, rebuild):
    """8 threads (each its own BuildCache: the lock is per open file, as between processes)."""
    key = {"stage": "x"}
    if rebuild:  # an entry from an earlier run: rebuilt once, not eight times
        BuildCache(tmp_path).get_or_build(key, _slow_builder([]), log=lambda *a: None)
    calls, errors, hits = [], [], []
    caches = [BuildCache(tmp_path, rebuild=rebuild) for _ in range(8)]

    def go(c):
        try:
            hits.append(c.get_or_build(key, _slow_builder(calls), log=lambda *a: None)[2])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and sorted(hits) == [False] + [True] * 7
    assert_cache_valid(tmp_path)


def test_concurrent_rebuild_runs_share_one_cache(tmp_path):
    """4 concurrent ``sdparity check --rebuild`` on one fresh cache: all pass, each entry is
    built once (the others wait for it and reuse it), the cache verifies afterwards. (4, not
    the 8 of before: three waiting on one builder is the race; each process costs ~5 s of CPU.)"""
    runs = 4
    root = fresh_cache(tmp_path)
    env = {**os.environ, "SDPARITY_CACHE": str(root)}
    logs = [tmp_path / f"r{i}.log" for i in range(runs)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "sdparity", "check", "--rebuild", "--stages",
                                           CHEAP, "--backends", "llvm", "--report", str(tmp_path / f"r{i}.json")],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f))
    for p in procs:
        p.wait(timeout=600)
    outs = [(None, log.read_text()) for log in logs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    for i in range(runs):
        summary = json.loads((tmp_path / f"r{i}.json").read_text())["summary"]
        assert summary["pass"] == 5 and summary["fail"] == summary["error"] == 0
    for stage in CHEAP.split(","):
        built = sum(err.count(f"] {stage}: built in") for _, err in outs)
        assert built == 1, f"{stage} built {built} times"
    assert len(entries(root / "builds")) == 2
    assert_cache_valid(root / "builds")


# A fork server: TVM is imported (4 s of CPU) once; each build runs in a forked child that the
# test kills at a random moment. "rebuild" on stdin builds with --rebuild; it answers the child's
# pid, then its wait status once the child is gone.
FORK_SERVER = """
import os, sys
from sdparity.backends import get_backend
from sdparity.cache import BuildCache
from sdparity.registry import get_stage
import tvm.relax  # noqa: F401
llvm = get_backend("llvm")
llvm.env_key()
stages = [get_stage(n) for n in ("concat_embeddings", "image_to_rgba")]
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cache = BuildCache(rebuild=line.strip() == "rebuild")
            for st in stages:
                llvm.build_cached(lambda: st.build_ir(None, {}), st.build_key(None, {}), cache, log=lambda *a: None)
            code = 0
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def test_sigkill_during_builds_then_rerun_gives_the_right_verdict(tmp_path, monkeypatch, capsys):
    """SIGKILL a build at random points (fresh and --rebuild), then a plain check passes on what
    is left: a killed build never leaves an entry that looks valid, and its temp folder goes."""
    from sdparity.cli import main

    root = fresh_cache(tmp_path)
    builds = root / "builds"
    env = {**os.environ, "SDPARITY_CACHE": str(root)}
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    killed = 0
    try:
        assert server.stdout.readline().strip() == "ready"
        for i in range(6):
            server.stdin.write("rebuild\n" if i % 2 else "build\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.4))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            status = int(server.stdout.readline())
            killed += os.WIFSIGNALED(status)
            assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, f"seed {seed}: build failed"
            for e in entries(builds):  # whatever is there verifies
                _verify(e, deep=True)
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert killed, f"seed {seed}: no kill landed during a build"
    monkeypatch.setenv("SDPARITY_CACHE", str(root))
    rc = main(["check", "-q", "--stages", CHEAP, "--backends", "llvm", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert rc == 0, f"seed {seed}: {out.err[-3000:]}"
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["pass"] == 5
    assert_cache_valid(builds)


def test_stale_build_folders_are_collected(tmp_path):
    import fcntl

    live_name, stale_name = "a" * 20, "b" * 20
    stale = tmp_path / f".build-{stale_name}-x1y2z3w4"  # killed: its lock is free
    live = tmp_path / f".build-{live_name}-k9k9k9k9"  # a build in progress elsewhere
    legacy_old, legacy_new = tmp_path / ".build-abc12345", tmp_path / ".build-def67890"
    for d in (stale, live, legacy_old, legacy_new):
        d.mkdir()
        (d / "half.so").write_bytes(b"half")
    os.utime(legacy_old, (time.time() - 7 * 3600,) * 2)  # an older sdparity's, hours old
    (tmp_path / ".locks").mkdir()
    fd = os.open(tmp_path / ".locks" / f"{live_name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" holds it (another open file)
        BuildCache(tmp_path).get_or_build({"a": 1}, _slow_builder([]), log=lambda *a: None)
        assert not stale.exists() and not legacy_old.exists()
        assert live.exists() and legacy_new.exists()
        assert BuildCache(tmp_path).clear() == 1 and live.exists()  # clear: entries, not live builds
    finally:
        os.close(fd)
    BuildCache(tmp_path).clear()
    assert not live.exists() and legacy_new.exists()


def _interrupted_builder(then=None):
    def build(tmp):
        (tmp / "lib.so").write_bytes(b"x" * 10)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)  # the KeyboardInterrupt arrives here...
        except KeyboardInterrupt:
            if then:
                raise then from None  # ...and comes back as another error
            # ...and is swallowed, as TVM's C++ does
        return {"note": "finished as if nothing happened"}
    return build


@pytest.mark.parametrize("then", [None, RuntimeError("TVMError: interrupted")], ids=["swallowed", "converted"])
def test_ctrl_c_during_a_build_is_never_cached(tmp_path, then):
    # an interactive process's SIGINT handling, whatever an earlier test in this worker left
    # (the cache records interrupts only under the default handler)
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_a_build(tmp_path, then)
    finally:
        signal.signal(signal.SIGINT, saved)


def _ctrl_c_during_a_build(tmp_path, then):
    cache = BuildCache(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build({"a": 1}, _interrupted_builder(then), log=lambda *a: None)
    assert time.perf_counter() - t0 < 1.5  # Python code still sees the interrupt at once
    assert not cache.entry({"a": 1}).exists() and entries(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    _, _, hit = cache.get_or_build({"a": 1}, _slow_builder([]), log=lambda *a: None)
    assert not hit


# ---- 5. one line, exit 2, before the work --------------------------------------------------------

@pytest.mark.parametrize("kind", ["read-only", "a file", "full"])
def test_unusable_cache_folder_is_refused_up_front(kind, tmp_path):
    root = tmp_path / "cache"
    with contextlib.ExitStack() as stack:
        if kind == "read-only":
            stack.enter_context(tmpfs(root, "ro"))
            needle = "Read-only file system"
        elif kind == "a file":
            root.write_text("not a folder")
            needle = "is not a folder"
        else:
            stack.enter_context(full_disk(root))
            needle = "full"
        r, cpu = timed("check", "--stages", CHEAP, "--report", tmp_path / "r.json",
                       env={**os.environ, "SDPARITY_CACHE": str(root)})
        line = one_error_line(r)
        assert needle in line and "cache folder" in line and cpu < 1.5, line
    assert not (tmp_path / "r.json").exists()


def test_repeated_stages_and_backends_run_once(tmp_path):
    from sdparity.cli import backend_list, build_parser, stage_list

    assert stage_list("image_to_rgba,concat_embeddings,image_to_rgba") == ["image_to_rgba", "concat_embeddings"]
    assert backend_list("llvm,llvm") == ["llvm"]
    args = build_parser().parse_args(["check", "--stages", "clip,clip", "--backends", "llvm,llvm",
                                      "--report", str(tmp_path / "r.json")])
    assert args.stages == ["clip"] and args.backends == ["llvm"]


def test_latent_has_an_upper_bound(tmp_path):
    from reference.models import MAX_LATENT_SIDE
    from sdparity.cli import latent_hw

    assert MAX_LATENT_SIDE == 512 and latent_hw("512x512") == [512, 512]
    r, cpu = timed("check", "--latent", "513x16", "--report", tmp_path / "r.json")
    assert "latent side 513 is over 512 (4096 pixels)" in one_error_line(r) and cpu < 1.0
    assert "over 512" in one_error_line(sdparity("check", "--latent", "100000x100000"))


def test_all_backends_skipped_says_why(tmp_path, capsys):
    from sdparity.backends import get_backend
    from sdparity.cli import main

    reason = get_backend("vulkan").unavailable_reason()
    if reason is None:
        pytest.skip("this TVM and machine have Vulkan")
    rc = main(["check", "-q", "--stages", CHEAP, "--backends", "vulkan", "--report", str(tmp_path / "r.json")])
    assert rc == 1  # as before: nothing passed
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("sdparity: nothing was checked") and f"vulkan: {reason}" in line, line


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory):
    """The tiny model's configs and (hard-linked) weights in a folder of our own."""
    from reference.models import builtin_model_path, ensure_builtin

    ensure_builtin("tiny", log=lambda *a: None)
    dest = tmp_path_factory.mktemp("models") / "tiny"
    shutil.copytree(builtin_model_path("tiny"), dest, copy_function=os.link)
    return dest


@pytest.mark.parametrize("cfg,text,needle", [
    ("unet/config.json", "[1, 2, 3]", "unet/config.json is not a JSON object (it holds a list)"),
    ("model_index.json", '"StableDiffusionPipeline"', "model_index.json is not a JSON object (it holds a str)"),
    ("vae/config.json", "null", "vae/config.json is not a JSON object"),
    ("unet/config.json", "SAMPLE 4096", "sample_size 4096 is over 512"),
])
def test_model_config_that_is_not_an_object_is_refused_up_front(cfg, text, needle, tiny_copy, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_copy, folder, copy_function=os.link)
    target = folder / cfg
    target.unlink()  # a hard link: write a new file, never into the shared one
    if text.startswith("SAMPLE"):
        data = json.loads((tiny_copy / cfg).read_text())
        data["sample_size"] = int(text.split()[1])
        text = json.dumps(data)
    target.write_text(text)
    r, cpu = timed("check", "--stages", CHEAP, "--model", folder, "--report", tmp_path / "r.json")
    assert needle in one_error_line(r) and cpu < 1.5, r.stderr


def test_a_killed_builds_folder_goes_even_when_its_entry_is_cached(tmp_path):
    """A build killed after another process had made the same entry leaves `.build-<entry>-*`;
    the next run only reuses the entry, and still removes the folder (the CI rehearsal's flake)."""
    first = BuildCache(tmp_path)
    entry, _, cached = first.get_or_build({"a": 1}, _slow_builder([]), log=lambda *a: None)
    assert not cached
    left = tmp_path / f".build-{entry.name}-k1ll3d00"
    left.mkdir()
    (left / "half.so").write_bytes(b"half")
    again, _, cached = BuildCache(tmp_path).get_or_build({"a": 1}, _slow_builder([]), log=lambda *a: None)
    assert cached and again == entry and not left.exists()
