"""Allow `python -m zdagent`."""

from zdagent.cli import main

main()
