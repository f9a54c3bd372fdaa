"""The `adstream` command line and the composition root: what builds settings, sessions and clients."""
