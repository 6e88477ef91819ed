"""The `instant-orders` operator CLI: JSON results on stdout, progress and errors on stderr."""
