"""Per-row explanations of registered torch models: Captum's Integrated Gradients over pixels or tokens."""
