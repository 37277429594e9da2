"""zdagent: zero-downtime blue-green deploys for one VPS with Docker and Nginx."""

__version__ = "0.1.0"
