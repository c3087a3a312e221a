"""Device drivers (layer 3): protocols, real implementations and simulated twins."""
