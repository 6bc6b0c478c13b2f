"""Training: loss, learning-rate schedule, batching and the training loop."""
