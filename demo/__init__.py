"""`make run`'s demo, a Django app installed only for development (DJANGO_DEBUG, which `make run` turns on) and the
tests: the `dev_setup` command (a dev admin user and the demo account) and the `demo_story` command, which plays a
short story of lost fills being found and corrected (demo/story.py) against the sandbox exchange. Both refuse to run
unless DEBUG is on, and the story refuses unless Binance's URL is a local sandbox. Also the admin screenshot script
(screenshots.py, browser.py)."""
