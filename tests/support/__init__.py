"""The harness: what the tests, bench/ and the demos start as root, kept out of the wheel.

Private Docker engines (private_dockerd, private_engines, private_swarm),
dockerfs-fuse as a child process (mount_process), how a test waits for a state
(waiting) and the demos `make demo` and `make demo-swarm` run (demo, demo_swarm).
It is imported as `support`, with the checkout's tests/ on the path: pytest puts
it there, bench/ adds it itself and the Makefile sets PYTHONPATH for the demos.
"""

from pathlib import Path

# The directory to put on sys.path (PYTHONPATH) to import this package.
ROOT = Path(__file__).resolve().parent.parent
