"""Provider adapters: one module per provider, nothing provider-specific elsewhere."""
