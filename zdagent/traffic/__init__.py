"""Traffic figures per slot from Nginx's own JSON access log, and the verdicts drawn from them.

``windows``: pure sliding windows per slot; ``analysis``: pure ``judge`` and the state of one
switch under analysis; ``follow``: the daemon's follower of the access log (rotation-proof).
"""
