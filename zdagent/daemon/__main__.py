"""Allow `python -m zdagent.daemon` (the same as `zdagentd`)."""

from zdagent.daemon.server import main

main()
