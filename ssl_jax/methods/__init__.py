"""Training objectives: each method owns its batch loss and its extra state."""
