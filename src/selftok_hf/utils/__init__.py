"""Utilities the tools share (conversion, the trainers, the apps); nothing here travels with the weights."""
