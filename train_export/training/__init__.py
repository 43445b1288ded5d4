"""The training loop and its parts: precision, optimiser and loss, callbacks, time budget, distillation."""
