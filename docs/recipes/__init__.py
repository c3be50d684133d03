"""The runnable code of the guide "Porting a PyTorch recipe" (docs/porting.rst):
each module holds a torch recipe's loop as its authors wrote it and its JAX ports,
facade and functional. tests/test_recipes.py runs them against each other."""
