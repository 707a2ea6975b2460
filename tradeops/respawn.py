"""`python -m tradeops.respawn COMMAND…`: run COMMAND and start it again whenever it exits, until told to stop.

Why: a Procfile runner (honcho, foreman) stops every process as soon as one exits, so one crashed worker took the
web, beat and the user stream down with it. Each Procfile line runs under this, so a process that exits — crashed,
killed, or a clean exit nobody asked for — is started again on its own, and the others never notice. Restarts back
off exponentially (RESPAWN_BACKOFF_BASE_SEC doubling up to RESPAWN_BACKOFF_MAX_SEC), and the backoff resets once the
process has stayed up RESPAWN_RESET_AFTER_SEC, so a crash loop neither spins the CPU nor hammers Redis or MySQL.

SIGTERM/SIGINT stop it: the signal goes on to the process as SIGTERM (warm shutdown for Celery, graceful for
gunicorn, its sockets closed for the stream — the listenKey is left to lapse), and once that has exited, so does
this, with its code — never a restart after a stop. Under systemd (deploy/systemd/) systemd restarts the units
itself; there the commands run without this wrapper.
"""

import os
import signal
import subprocess
import sys
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def log(message: str) -> None:
    print(f"respawn[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before restart number `failures` (1, 2, …) of a row: base, 2·base, 4·base … up to cap."""
    return min(cap, base * 2 ** (failures - 1))


def exit_status(returncode: int) -> int:
    """The shell's convention: a process killed by signal N exits with 128 + N (Popen reports -N)."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tradeops.respawn COMMAND [ARG…]", file=sys.stderr)
        return 2
    base = _env_float("RESPAWN_BACKOFF_BASE_SEC", 1)
    cap = _env_float("RESPAWN_BACKOFF_MAX_SEC", 60)
    reset_after = _env_float("RESPAWN_RESET_AFTER_SEC", 60)

    stopping: list[int] = []  # the stop signal received, if any
    child = None

    def on_stop(signum, _frame):
        if not stopping:
            stopping.append(signum)
            log(f"{signal.Signals(signum).name}: stopping {argv[0]} (no restart)")
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)

    failures = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = exit_status(child.wait())
        if stopping:
            return code
        failures = 1 if time.monotonic() - started >= reset_after else failures + 1
        delay = backoff(failures, base, cap)
        log(f"{' '.join(argv)} exited with {code}; starting it again in {delay:g} s (restart {failures} in a row)")
        # Wait out the backoff, or a stop signal, whichever comes first (blocked while waited for, so none slips
        # between the check and the wait; unblocked before the next start, whose process inherits the mask).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            received = None if stopping else signal.sigtimedwait(STOP_SIGNALS, delay)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if received is not None:
            on_stop(received.si_signo, None)
        if stopping:
            return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
