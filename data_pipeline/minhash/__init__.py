"""MinHash near-duplicate removal: signatures, LSH banding, connected components, survivor choice."""
