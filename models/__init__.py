"""Network architectures, training recipes and shipped weights for deepserve's models.

Nothing here imports the server; ``export`` builds on these modules.
"""
