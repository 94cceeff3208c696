"""Text generation: continuous batching over a paged KV cache (issue #14)."""
