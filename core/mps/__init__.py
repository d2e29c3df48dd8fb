"""MPS layouts per GPU and the compilers that turn them into deployable config."""
