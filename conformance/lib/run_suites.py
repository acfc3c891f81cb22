"""Run every conformance suite (conformance/suites/*.py, each in its own process) and print one
summary: suite, scenario, result, duration; then 'N passed, N failed, N skipped'.

    conformance/.venv/bin/python conformance/lib/run_suites.py [--binary B] [--server S]
                                                              [--suite NAME]... [--only REGEX]
Exit status: 0 when every scenario passed (or was skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = HERE.parent / "suites"
SUITE_TIMEOUT = 15 * 60  # a hung suite must not eat CI's budget


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parents[1] / "target" / "release" / "starling"))
    ap.add_argument("--server", default="starling", choices=["starling", "prosody"])
    ap.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    ap.add_argument("--only", help="regex on scenario names, passed to every suite")
    args = ap.parse_args()

    suites = sorted(p for p in SUITES.glob("*.py") if not p.name.startswith("_"))
    if args.suite:
        suites = [p for p in suites if p.stem in args.suite]
    if not suites:
        print("no conformance suites found", file=sys.stderr)
        return 1

    rows: list[dict] = []
    broken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conf-reports-") as tmp:
        for path in suites:
            report = Path(tmp) / f"{path.stem}.json"
            cmd = [sys.executable, str(path), "--server", args.server, "--binary", args.binary,
                   "--report", str(report)]
            if args.only:
                cmd += ["--only", args.only]
            print(f"==> suite {path.stem}", flush=True)
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd)
            try:
                rc = proc.wait(timeout=SUITE_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"suite {path.stem} exceeded {SUITE_TIMEOUT}s; stopping it", flush=True)
                proc.terminate()  # the suite stops its servers on SIGTERM
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                rc = "timeout"
            took = time.monotonic() - t0
            if report.exists():
                rows.extend(json.loads(report.read_text()))
            if rc != 0 and not any(r["suite"] == path.stem and r["status"] == "fail"
                                   for r in rows):
                broken.append(f"{path.stem}: exited {rc} after {took:.1f}s without a "
                              "failing scenario (crashed, timed out or ran nothing)")

    width = max([len(r["scenario"]) for r in rows] + [8])
    swidth = max([len(r["suite"]) for r in rows] + [5])
    print("\n" + "=" * (width + swidth + 22))
    print(f"{'suite':<{swidth}}  {'scenario':<{width}}  {'result':<6}  {'time':>7}")
    print("-" * (width + swidth + 22))
    for r in rows:
        print(f"{r['suite']:<{swidth}}  {r['scenario']:<{width}}  {r['status'].upper():<6}  "
              f"{r['duration']:>6.2f}s")
    print("=" * (width + swidth + 22))
    for b in broken:
        print(f"SUITE FAILED: {b}")
    passed = sum(r["status"] == "pass" for r in rows)
    failed = sum(r["status"] == "fail" for r in rows) + len(broken)
    skipped = sum(r["status"] in ("skip", "xfail") for r in rows)
    for r in rows:
        if r["status"] == "fail":
            print(f"FAILED: {r['suite']}: {r['scenario']}")
    print(f"conformance: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
