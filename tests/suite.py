"""`make test`: every test file in a pytest process of its own, two at a time, the e2e files first.

One process per file because TensorFlow, Beam and TFMA keep what a test loaded until the process ends: a worker
that runs file after file grows past 10 GB, and two such workers beside the e2e pipeline exhaust a 24 GB machine.
A file's module fixtures are still built once. Arguments after `--` go to every pytest (e.g. `-- -m "not e2e"`).

    python -m tests.suite [--lanes N] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
NO_TESTS_SELECTED = 5  # pytest's exit status when a file has no test that the arguments select


@dataclass
class Outcome:
    path: Path
    status: int
    seconds: float
    tally: str  # pytest's last line, e.g. "6 passed, 2 warnings in 376.39s"
    output: str

    @property
    def passed(self) -> bool:
        return self.status in (0, NO_TESTS_SELECTED)


def test_files() -> list[Path]:
    """The e2e files first (the longest: one lane runs each while the other takes the rest), then the others in
    path order."""
    files = sorted(TESTS.rglob("test_*.py"))
    return sorted(files, key=lambda path: "pytest.mark.e2e" not in path.read_text())


def run_file(path: Path, pytest_args: list[str], basetemp: Path) -> Outcome:
    command = [sys.executable, "-m", "pytest", str(path.relative_to(ROOT)), "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--basetemp={basetemp}", *pytest_args]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        log.seek(0)
        output = log.read()
    lines = [line.strip("= ") for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|"
                                                                            r"deselected)|no tests ran", line)]
    return Outcome(path, status, time.monotonic() - start, lines[-1] if lines else f"exit status {status}", output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=2, help="test files run at once (default 2)")
    parser.add_argument("pytest_args", nargs="*", help="passed to every pytest (after --)")
    args = parser.parse_args(argv)
    if args.lanes < 1:
        parser.error("--lanes must be at least 1")

    files = test_files()
    pending: queue.Queue[Path] = queue.Queue()
    for path in files:
        pending.put(path)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    scratch = Path(tempfile.mkdtemp(prefix="ich-tests-"))
    start = time.monotonic()

    def lane() -> None:
        while True:
            try:
                path = pending.get_nowait()
            except queue.Empty:
                return
            outcome = run_file(path, args.pytest_args, scratch / path.stem)
            with lock:
                outcomes.append(outcome)
                mark = "ok  " if outcome.passed else "FAIL"
                print(f"{mark} [{len(outcomes):2d}/{len(files)}] {outcome.path.relative_to(ROOT)}: {outcome.tally} "
                      f"({outcome.seconds:.0f} s, {(time.monotonic() - start) / 60:.1f} min into the suite)",
                      flush=True)
                if not outcome.passed:
                    print(outcome.output, flush=True)

    print(f"{len(files)} test files, {args.lanes} at a time, each in its own pytest process", flush=True)
    lanes = [threading.Thread(target=lane) for _ in range(args.lanes)]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()

    failed = [outcome for outcome in outcomes if not outcome.passed]
    slowest = sorted(outcomes, key=lambda outcome: -outcome.seconds)[:5]
    print(f"\n{len(outcomes) - len(failed)} of {len(files)} files passed in {(time.monotonic() - start) / 60:.1f} min; "
          "slowest: " + ", ".join(f"{o.path.name} {o.seconds:.0f} s" for o in slowest))
    for outcome in failed:
        print(f"FAILED {outcome.path.relative_to(ROOT)}: {outcome.tally} (its scratch: {scratch / outcome.path.stem})")
    if not failed:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
