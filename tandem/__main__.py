"""``python -m tandem`` is the ``tandem`` command."""

from tandem.shell.cli import main

main()
