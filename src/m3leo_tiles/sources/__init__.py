"""Source adapters, one module each; see ``base`` for the contract."""
