"""Command line interface: ``hybridgl segment | batch | weights | evaluate | serve``.

See ``docs/CLI.md``. The entry point is :func:`hybridgl.cli.main.main`.
"""
