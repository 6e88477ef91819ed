"""The fuzzer: schemathesis against the api's own /openapi.json, with the demo account's
credentials, every check on, a few hundred examples per operation. It reports any server
error and any answer that breaks the published schema (status, headers, body).

Run on the running local stack (`make up` first; `make fuzz`, `make fuzz
FUZZ_ARGS="--max-examples 500"`), alone or while `make drill` runs. schemathesis lives in its
own virtualenv under the stack's state folder (`.run/tools/`), made on first use: it brings
hypothesis and a pytest plugin that the project's own test run should not load. Standard
library only. Exit status: schemathesis's (0 when nothing failed).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERSION = "4.32.5"


def say(message: str) -> None:
    print(f"[fuzz] {message}", file=sys.stderr, flush=True)


def interpreter() -> str:
    """FUZZ_PYTHON, else this Python. Under Python 3.11 hypothesis (inside schemathesis) can
    hit CPython's "AST constructor recursion depth mismatch" (python/cpython#106905) while it
    describes a strategy, which ends that operation's run with a tool error, not a finding:
    point FUZZ_PYTHON at a Python 3.12 or newer to avoid it."""
    return os.environ.get("FUZZ_PYTHON") or sys.executable


def tool(run_dir: Path) -> Path:
    """The `st` command of a virtualenv holding schemathesis VERSION, made if missing."""
    python = interpreter()
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    venv = run_dir / "tools" / f"schemathesis-{VERSION}-py{version}"
    st = venv / "bin" / "st"
    if st.exists():
        return st
    say(f"installing schemathesis {VERSION} into {venv} with {python} (once)")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    result = subprocess.run([*pip, f"schemathesis=={VERSION}"], check=False)
    if result.returncode != 0 or not st.exists():
        raise SystemExit(
            f"installing schemathesis {VERSION} with pip failed (is PyPI reachable?); "
            f"remove {venv} and run `make fuzz` again"
        )
    return st


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=300, help="per operation")
    parser.add_argument("--workers", default="2", help="concurrent workers, or auto")
    parser.add_argument("--seed", type=int, help="replay a run")
    parser.add_argument(
        "--under-faults",
        action="store_true",
        help="while `make drill` kills processes: a 503 SERVICE_UNAVAILABLE (the contract's "
        "answer while the database or broker is down) is not counted as a server error, and a "
        "refused connection (the api being restarted) is tried again",
    )
    args = parser.parse_args()
    run_dir = Path(os.environ.get("IO_RUN_DIR", REPO / ".run"))
    credentials = run_dir / "demo-credentials.txt"
    if not credentials.is_file():
        say(f"{credentials} is missing: run `make up` (it seeds the demo account) first")
        return 2
    demo = json.loads(credentials.read_text())
    api_url = f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}"
    # beside the drill the api may be down for a moment: wait for it (a minute) then
    deadline = time.monotonic() + (60 if args.under_faults else 0)
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/readyz", timeout=5):  # noqa: S310 - http
                break
        except (OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                say(f"the api at {api_url} is not ready ({exc}): start the stack with `make up`")
                return 2
            time.sleep(1)
    report_dir = run_dir / "fuzz"
    report_dir.mkdir(parents=True, exist_ok=True)
    settings = (REPO / "tests" / "fuzz.toml").read_text()
    if args.under_faults:
        settings = settings.replace(
            "[[operations]]",
            'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]\n\n'
            "[[operations]]",
            1,
        )
    config = report_dir / "fuzz.toml"
    config.write_text(settings)
    command = [
        str(tool(run_dir)),
        "--config-file",
        str(config),
        "run",
        f"{api_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(args.max_examples),
        "--workers",
        args.workers,
        "--header",
        f"x-api-key: {demo['apiKey']}",
        "--header",
        f"Authorization: Bearer {demo['accessToken']}",
        # examples that found something are kept for the next run, in the stack's state
        "--generation-database",
        str(report_dir / "examples"),
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if args.under_faults:
        # a killed api refuses connections until it is back (seconds): ask again, patiently
        command += ["--request-retries", "10", "--request-timeout", "30"]
    say(f"{args.max_examples} examples per operation of {api_url}/openapi.json, every check")
    result = subprocess.run(command, check=False)
    say(f"exit {result.returncode}; JUnit report in {report_dir}/")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
