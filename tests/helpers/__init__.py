"""Test-only helpers: fake and slow source adapters, cluster fixtures."""
