"""The collaborative notes demo: its page (static/) and the small server that serves it (server.py)."""
