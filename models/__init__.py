"""Architecture adapters (one module per family, see `models.base`) and the bundled tiny model."""
