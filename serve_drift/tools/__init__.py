"""Command-line tools and demos: ``serve-drift`` and everything it runs.

One entry point (:mod:`~serve_drift.tools.cli`); the demo, sentinel runs, reference building
and the event-store queries sit beside it. This is the top of the house: it may import every
other stage, and nothing imports it.
"""
