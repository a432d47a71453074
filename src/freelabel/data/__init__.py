"""Image sources, the seeded batch order, and batched random views."""
