"""python manage.py demo_story [--wait]: play demo/story.py against the sandbox (development only; `make run`).

--wait keeps the process alive after the story (honcho stops every process when one exits), until SIGINT/SIGTERM.
"""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from demo.story import Story, StoryError


class Command(BaseCommand):
    help = "Development only: seed the demo account in the sandbox and play the lost-fill story."

    def add_arguments(self, parser):
        parser.add_argument("--admin-url", default="http://127.0.0.1:8000/admin/")
        parser.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for each correction")
        parser.add_argument("--wait", action="store_true", help="stay alive after the story until stopped")

    def handle(self, *args, admin_url, timeout, wait, **options):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            story = Story(admin_url=admin_url, out=lambda text: self.stdout.write(text), timeout=timeout, stop=stop)
        except StoryError as exc:
            raise CommandError(str(exc)) from None
        result = story.play()
        if stop.is_set():
            return
        if wait:
            self.stdout.write("   (the story is over; the stack keeps running — Ctrl-C stops everything)")
            stop.wait()
        if not result["ok"]:
            raise CommandError(result["error"] or "some demo trades disagree with the exchange")
