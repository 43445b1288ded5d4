"""Training data: dataset loading (FER2013 npz/CSV/folders), Keras batches with mixing, augmentation."""
