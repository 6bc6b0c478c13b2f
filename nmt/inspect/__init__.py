"""Looking inside a trained model: ``nmt attend`` (attention maps and their rendering)."""
