"""Training (torch + MONAI, the optional `[train]` extra). Nothing here is imported by the product at run time."""
