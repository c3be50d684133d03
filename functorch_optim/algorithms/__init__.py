"""One module per torch.optim algorithm: defaults, validation, state and step rule."""
