"""A stand-in for `kubejoin serve` as a supervised worker, for tests/test_supervisor.py: it
follows the next step of its slot's plan (a JSON list in PLAN_DIR/<index>), as a real worker
would behave. Steps: "fail" (exit 2 at once, as a worker whose tokens do not load), "serve"
(say ready, then serve until SIGTERM: exit 0), "serve-then-2" (say ready, exit 2 after 0.5 s),
"slow-serve" (3 s of starting with no SIGHUP handler yet, then as "serve"), "late-fail" (exit 2
after 2 s of starting), "term-fails" (never ready; a SIGTERM makes it exit 2)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

arguments = sys.argv[1:]
index = arguments[arguments.index("--worker-index") + 1]
ready = int(arguments[arguments.index("--ready-fd") + 1])
plan_file = Path(os.environ["PLAN_DIR"]) / index
plan = json.loads(plan_file.read_text())
step = plan.pop(0) if plan else "serve"
plan_file.write_text(json.dumps(plan))
with (Path(os.environ["PLAN_DIR"]) / "log").open("a") as log:
    log.write(f"{index} {os.getpid()} {step}\n")

if step == "fail":
    sys.exit(2)
if step == "late-fail":
    time.sleep(2.0)
    sys.exit(2)
if step == "term-fails":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    time.sleep(60)
    sys.exit(3)
if step == "slow-serve":
    time.sleep(3.0)  # SIGHUP's default action (terminate) applies until the handler below
stopping = False


def stop(*_: object) -> None:
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, lambda *_: None)
os.write(ready, b"ready\n")
os.set_blocking(ready, False)
deadline = time.monotonic() + (0.5 if step == "serve-then-2" else 60)
beat = time.monotonic()
while not stopping and time.monotonic() < deadline:
    time.sleep(0.02)
    if time.monotonic() - beat > 0.1:  # the heartbeat a real worker sends from its event loop
        beat = time.monotonic()
        os.write(ready, b".")
sys.exit(0 if stopping else 2)
