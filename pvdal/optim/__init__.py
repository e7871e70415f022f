"""Optimizers that reference recipes need beyond torch.optim."""
