"""A prepared training job for a GPU lent for minutes: ``job.sh`` runs there, ``pack.py`` carries the data (README.md)."""
