"""Stage 4: a trained model at work: evaluation, generation, batched serving with an OpenAI-compatible API, and export."""
