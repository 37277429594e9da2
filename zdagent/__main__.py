"""Allow `python -m zdagent` (the same entry point as the console script)."""

from zdagent.thin import main

main()
