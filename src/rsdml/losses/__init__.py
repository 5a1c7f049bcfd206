"""Losses: each a small ``nn.Module`` with a uniform call signature."""
