"""The model store on the device: pushed bundles, start-up rollback, checks, the push receiver, the swap."""
