"""`make run`'s demo: a dev admin user, a demo account in the sandbox exchange, and a short story of lost fills
being found and corrected (demo/story.py). Development only: both refuse to run unless DEBUG is on, and the story
refuses unless Binance's URL is a local sandbox."""
