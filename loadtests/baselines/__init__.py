"""Servers deepserve is compared with; see each module's docstring for what it does."""
