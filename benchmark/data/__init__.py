"""Data: the synthetic mammogram generator, the real CBIS-DDSM / INbreast loaders, the train/test split,
the prepared uint8 arrays every later stage reads, and the prepare stage that writes them."""
